"""Command-line options shared by the CLI tests: a tiny version of the demo config (6 phantoms of 12x64x64,
cbr-tiny, liver and spleen), so a train/evaluate/segment round trip takes seconds."""

TINY = [
    "--set", "data.loader_args={n_subjects: 6, shape: [12, 64, 64]}",
    "--set", "data.size=64",
    "--set", "data.protocol.organs=[liver, spleen]",
    "--set", "data.superpixels.params={min_size: 50}",
    "--set", "data.episodes.min_superpixel_pixels=20",
    "--set", "model.backbone.name=cbr-tiny",
    "--set", "model.backbone.truncate=block2",
    "--set", "model.head.feature_dim=8",
    "--set", "train.num_workers=0",
    "--set", "train.progress_bar=false",
    "--set", "train.accelerator=cpu",
]  # fmt: skip
