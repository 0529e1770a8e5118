"""``tool_extract_control.py``: a ControlNet out of any checkpoint, as a control-only file or a diffusers folder.

    python tool_extract_control.py control_sd15_canny.pth                    # -> control_sd15_canny_control.safetensors
    python tool_extract_control.py control_sd15_canny.pth out.pth --half     # fp16, pickle-free .pth
    python tool_extract_control.py control_sd15_canny.pth --to-diffusers out/canny   # config.json + safetensors
    python tool_extract_control.py --from-diffusers out/canny control_canny.safetensors

The input may be a full ControlLDM checkpoint, a control-only file, bare ControlNet keys or a diffusers folder.
Outputs are written atomically and never over an existing path (so never over the input).
"""
import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from cldm.formats import diffusers as dformat
from cldm.loading import CONTROL, control_weights
from cldm.model import CheckpointError, check_state_dict, create_control_net, load_model_config, save_state_dict


def default_output(source: Path, half: bool) -> Path:
    """``<input stem>_control[_fp16].safetensors`` beside the input (a diffusers folder: beside the folder)."""
    source = Path(source)
    stem = source.name if source.is_dir() else source.stem
    return source.parent / f"{stem}_control{'_fp16' if half else ''}.safetensors"


def read_control(source, config: Optional[str] = None, half: bool = False) -> dict:
    """The ControlNet of ``source`` under our key names (no prefix), checked against ``config`` when given."""
    with control_weights(source) as weights:
        if config:
            check_state_dict(create_control_net(config, device="meta"), weights.meta_state_dict(), source=str(source))
        sd = {k: weights.tensor(k).clone() for k in weights.shapes()}
    if half:
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    return sd


def extract(source, output=None, half: bool = False, config: Optional[str] = None) -> Path:
    """Write ``source``'s ControlNet as a control-only file (keys ``control_model.*``)."""
    output = Path(output) if output else default_output(Path(source), half)
    _refuse_existing(output, source)
    sd = read_control(source, config, half)
    save_state_dict({CONTROL + k: v for k, v in sd.items()}, str(output))
    return output


def to_diffusers(source, out_dir, config: Optional[str] = None, half: bool = False) -> Path:
    """Write ``source``'s ControlNet as a diffusers folder; ``config`` (the model yaml) gives its config.json."""
    from cldm.app.weights import config_for
    config = config or str(config_for(Path(source)))
    _refuse_existing(Path(out_dir), source)
    sd = read_control(source, config, half)
    return dformat.save_folder(sd, load_model_config(config), out_dir)


def from_diffusers(folder, output=None, half: bool = False) -> Path:
    """A diffusers ControlNet folder -> a control-only file."""
    if not Path(folder).is_dir():
        raise CheckpointError(f"--from-diffusers {folder}: not a folder (expected config.json + "
                              f"{dformat.WEIGHTS_NAME})")
    return extract(folder, output, half)


def _refuse_existing(path: Path, source) -> None:
    if Path(path).resolve() == Path(source).resolve():
        raise FileExistsError(f"the output {path} is the input: choose another name")
    if Path(path).exists():
        raise FileExistsError(f"output already exists: {path} (remove it or choose another name)")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Extract a ControlNet as a control-only file, or convert it to and "
                                                 "from diffusers' format.")
    parser.add_argument("input", nargs="?", type=Path,
                        help="checkpoint holding a ControlNet (full, control-only or a diffusers folder)")
    parser.add_argument("output", nargs="?", type=Path,
                        help="control-only file to write, .safetensors (default) or .pth/.ckpt "
                             "(default: <input>_control[_fp16].safetensors)")
    parser.add_argument("--half", action="store_true", help="store fp16 (half the size)")
    parser.add_argument("--to-diffusers", type=Path, metavar="OUT_DIR",
                        help="write a diffusers ControlNetModel folder (config.json + diffusion_pytorch_model."
                             "safetensors) instead")
    parser.add_argument("--from-diffusers", type=Path, metavar="DIR",
                        help="read this diffusers ControlNet folder (then OUTPUT is the only positional)")
    parser.add_argument("--config", help="model yaml of the ControlNet (default: the yaml beside the input, else by "
                                         "its name, else models/cldm_v15.yaml); checks the keys and writes "
                                         "config.json for --to-diffusers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.from_diffusers:
            if args.to_diffusers or args.output:
                parser.error("--from-diffusers takes at most one positional, the output file")
            written = from_diffusers(args.from_diffusers, args.input, args.half)
        elif args.input is None:
            parser.error("name the input checkpoint (or --from-diffusers DIR)")
        elif args.to_diffusers:
            if args.output:
                parser.error("--to-diffusers OUT_DIR replaces the output file; drop the second positional")
            written = to_diffusers(args.input, args.to_diffusers, args.config, args.half)
        else:
            written = extract(args.input, args.output, args.half, args.config)
    except (FileNotFoundError, FileExistsError, CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"written: {written}")


if __name__ == "__main__":
    main()
