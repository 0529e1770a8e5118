"""The ControlNet of any checkpoint as a control-only file (.safetensors by default, --half for fp16), or as a
diffusers folder and back.

    python tool_extract_control.py ./models/control_sd15_canny.pth [OUT.safetensors] [--half]
    python tool_extract_control.py ./models/control_sd15_canny.pth --to-diffusers ./models/canny-diffusers
    python tool_extract_control.py --from-diffusers ./models/canny-diffusers [OUT.safetensors] [--half]
"""
from cldm.formats.tool import main

if __name__ == "__main__":
    main()
