"""Errors that the user can fix. Every layer raises these; the CLI and the node print them as one line."""

import errno

#: OSError numbers that mean a full disk, a quota or a file-size limit: the user's to fix, whatever the file.
DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


class NmrUserError(Exception):
    """A mistake the user can fix (bad path, config, encoding, model file): one line, no traceback.

    The message names the thing (file, topic, parameter, encoding) and says what to do.
    """


class ImageDecodeError(NmrUserError, ValueError):
    """A sensor_msgs/Image that cannot be turned into an array (encoding, step, data length)."""


class ConfigError(NmrUserError, ValueError):
    """A configuration value (YAML key, CLI option, ROS parameter) that is invalid."""


class ModelFileError(NmrUserError):
    """A model file that is missing, corrupt, untrusted or for the wrong pair."""


class BagError(NmrUserError):
    """A rosbag2 bag that is missing, corrupt, or lacks the configured topics."""
