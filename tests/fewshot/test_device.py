from __future__ import annotations

import pytest
import torch

from fewshot.device import cpu_bf16_native, cpu_name, default_device


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"), [(False, False, False), (True, False, True), (False, True, True)]
)
def test_cpu_bf16_native_reads_torch_cpu_checks(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool, expected: bool
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert cpu_bf16_native() is expected


def test_cpu_bf16_native_is_false_when_torch_lacks_the_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    assert cpu_bf16_native() is False


def test_cpu_name_reads_proc_cpuinfo_or_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    name = cpu_name()
    assert name is None or (isinstance(name, str) and name == name.strip() and name)
    import builtins

    real_open = builtins.open

    def no_proc(path: object, *args: object, **kwargs: object) -> object:
        if str(path) == "/proc/cpuinfo":
            raise OSError("no /proc here")
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "open", no_proc)
    monkeypatch.setattr("platform.processor", lambda: "")
    assert cpu_name() is None


def test_default_device_rejects_unknown_and_missing_cuda() -> None:
    assert default_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        default_device("tpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            default_device("cuda")
