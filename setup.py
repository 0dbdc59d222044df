"""ament_python build for nmr: the Python package lives in src/nmr, data files go to share/nmr."""

import sys
from glob import glob

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.install_lib import install_lib


class _QuietByteCompile:
    """Skip byte-compiling silently where Python was told not to write bytecode.

    colcon runs setup.py with PYTHONDONTWRITEBYTECODE=1; setuptools then skips byte-compiling anyway but
    says so on stderr ("byte-compiling is disabled, skipping."), which makes every `colcon build` end
    with "1 package had stderr output: nmr".
    """

    def byte_compile(self, files):
        if not sys.dont_write_bytecode:
            super().byte_compile(files)


class QuietBuildPy(_QuietByteCompile, build_py):
    pass


class QuietInstallLib(_QuietByteCompile, install_lib):
    pass


package_name = 'nmr'

setup(
    name=package_name,
    version='0.1.0',
    package_dir={'': 'src'},
    packages=find_packages('src'),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.py')),
        ('share/' + package_name + '/config', glob('config/*')),
        ('share/' + package_name + '/rviz', glob('rviz/*.rviz')),
        ('share/' + package_name + '/models', glob('models/*.pt') + glob('models/*.onnx') + glob('models/*.md')),
    ],
    python_requires='>=3.10',
    install_requires=['setuptools'],
    extras_require={'test': ['pytest', 'hypothesis']},
    zip_safe=False,
    cmdclass={'build_py': QuietBuildPy, 'install_lib': QuietInstallLib},
    maintainer='nmr developers',
    maintainer_email='nmr@example.com',
    description='Learned multi-modal image registration (NeMAR) for ROS 2.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'nmr = nmr.cli.main:main',
            'register_node = nmr.ros.node:main',
        ],
    },
)
