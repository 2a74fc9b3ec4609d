"""What every omniart package shares, below all of them: the error family and its CLI translation, where a worker
runs (device, its part of the work, software versions), atomic publishing of files and folders, numeric checks."""
from omniart.core.environment import WorkerPart, resolve_device, resolve_part, software_versions
from omniart.core.errors import OmniError, cli_errors
from omniart.core.files import make_parent, publish_file, publish_folder
from omniart.core.numeric import non_finite_rows

__all__ = ["OmniError", "cli_errors", "WorkerPart", "resolve_part", "resolve_device", "software_versions",
           "publish_file", "publish_folder", "make_parent", "non_finite_rows"]
