"""Two ControlNets on one prompt, each with its own image, detector and strength; their residuals add.

Default: Canny + pose (`./models/control_sd15_canny.pth`, `control_sd15_openpose.pth`); `--tasks hed seg` etc.
"""
from cldm.app.cli import main_multi

if __name__ == "__main__":
    main_multi()
