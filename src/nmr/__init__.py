"""nmr: learned multi-modal image registration (NeMAR) for RGB, thermal and depth cameras on ROS 2.

Layers, each importing only the ones before it:
data (messages, bags, sync) -> models (R, T, D) -> training -> inference -> pipeline -> ros, cli.
"""

__version__ = '0.1.0'
