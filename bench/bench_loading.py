"""Peak memory while loading a control-only ControlNet file next to a Stable Diffusion base (cldm.loading).

Generates, in a temporary folder, random files of the real layouts (the config's ControlLDM split the way people
hold it): an SD base (fp16 .safetensors, like v1-5-pruned-emaonly.safetensors) and the ControlNet as a
control-only file in three forms (fp32 .safetensors ~1.45 GB, fp32 zip .pth, fp16 .safetensors ~723 MB). Each
variant runs in a fresh process: the ControlLDM is built without initialising its weights (``meta`` then
``to_empty``), the base is loaded, the peak-RSS mark is reset, and the control file is loaded. Reported: the
resident memory after the base, the peak while the control file loads, the model's own size, and the same with
the plain path (whole file read, then ``load_state_dict``) for comparison.

    python -m bench.bench_loading                       # full size: ~6 GB free RAM, ~6 GB of temporary disk
    python -m bench.bench_loading --config tests/configs/cldm_tiny.yaml   # smoke run
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GiB = 1024 ** 3


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes (VmRSS, VmHWM, RssAnon, RssFile)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: writing 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


FILES = {"base": "v1-5-pruned-emaonly.safetensors", "fp32.safetensors": "control_fp32.safetensors",
         "fp32.pth": "control_fp32.pth", "fp16.safetensors": "control_fp16.safetensors"}


def generate(config: str, folder: Path) -> dict:
    """Write the random base and control files; returns their paths."""
    import torch
    from cldm.model import create_model, save_state_dict

    model = create_model(config, device="meta")
    g = torch.Generator().manual_seed(0)
    shapes = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    del model

    def random(keys, dtype):
        out = {}
        for k in keys:
            shape, own = shapes[k]
            t = torch.randn(shape, generator=g) * 0.02 if own.is_floating_point else torch.zeros(shape, dtype=own)
            out[k] = t.to(dtype) if own.is_floating_point else t
        return out

    paths = {k: folder / v for k, v in FILES.items()}
    base_keys = [k for k in shapes if not k.startswith("control_model.")]
    control_keys = [k for k in shapes if k.startswith("control_model.")]
    save_state_dict(random(base_keys, torch.float16), str(paths["base"]))
    control = random(control_keys, torch.float32)
    save_state_dict(control, str(paths["fp32.safetensors"]))
    save_state_dict(control, str(paths["fp32.pth"]))
    save_state_dict({k: v.half() for k, v in control.items()}, str(paths["fp16.safetensors"]))
    return {k: str(v) for k, v in paths.items()}


def measure(config: str, base: str, control: str, plain: bool) -> dict:
    """One fresh process's figures (called through ``--measure``)."""
    import torch
    from cldm.loading import CONTROL, fill, load_control_weights, open_file
    from cldm.model import create_model, load_state_dict

    torch.set_num_threads(2)
    model = create_model(config, device="meta").to_empty(device="cpu")
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    control_bytes = sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if k.startswith(CONTROL))
    start = _status("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    with open_file(base) as f:  # the base, read into the parameters (the app's cached model)
        fill(model, f)
    base_s = time.perf_counter() - t0
    after_base, peak_base = _status("VmRSS"), _status("VmHWM")
    _reset_peak()
    t0 = time.perf_counter()
    if plain:  # what loading did before: the whole file in memory, then copied into the parameters
        sd = load_state_dict(control)
        model.load_state_dict(sd, strict=False)
        del sd
    else:  # cldm.loading: keys checked, then each tensor straight into its parameter
        load_control_weights(model.control_model, control)
    control_s = time.perf_counter() - t0
    return {"control_file": os.path.basename(control), "plain": plain, "file_bytes": os.path.getsize(control),
            "model_bytes": model_bytes, "control_part_bytes": control_bytes, "rss_start": start,
            "rss_after_base": after_base, "peak_during_base": peak_base, "peak_during_control": _status("VmHWM"), "rss_end": _status("VmRSS"),
            "base_s": base_s, "control_s": control_s}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "models" / "cldm_v15.yaml"))
    parser.add_argument("--dir", help="folder for the random files, kept and reused by later runs (default: a "
                                      "temporary folder, removed)")
    parser.add_argument("--measure", nargs=3, metavar=("BASE", "CONTROL", "PLAIN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.config, args.measure[0], args.measure[1], args.measure[2] == "1")))
        return
    with contextlib.ExitStack() as stack:
        folder = Path(args.dir) if args.dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        paths = {k: str(folder / v) for k, v in FILES.items()}
        if not all(Path(p).is_file() for p in paths.values()):
            generate(args.config, folder)
        print(f"random files ready in {time.perf_counter() - t0:.0f} s: " +
              ", ".join(f"{Path(p).name} {os.path.getsize(p) / 1e9:.2f} GB" for p in paths.values()), flush=True)
        rows = []
        for variant, plain in (("fp32.safetensors", False), ("fp32.pth", False), ("fp16.safetensors", False),
                               ("fp32.safetensors", True), ("fp32.pth", True)):
            out = subprocess.run([sys.executable, "-m", "bench.bench_loading", "--config", args.config, "--measure",
                                  paths["base"], paths[variant], "1" if plain else "0"], cwd=ROOT, check=True,
                                 capture_output=True, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{'plain ' if plain else 'ours  '}{r['control_file']:<26} file {r['file_bytes'] / GiB:5.2f} GiB | "
                  f"start {r['rss_start'] / GiB:.2f} GiB, base peak {r['peak_during_base'] / GiB:.2f} | "
                  f"after base {r['rss_after_base'] / GiB:5.2f} GiB | peak while loading the control "
                  f"{r['peak_during_control'] / GiB:5.2f} GiB (+{(r['peak_during_control'] - r['rss_after_base']) / GiB:.2f}"
                  f" for a {r['control_part_bytes'] / GiB:.2f} GiB ControlNet) | end {r['rss_end'] / GiB:5.2f} GiB | "
                  f"model {r['model_bytes'] / GiB:.2f} GiB | {r['control_s']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
