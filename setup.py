"""ament_python build for nmr: the Python package lives in src/nmr, data files go to share/nmr."""

from glob import glob

from setuptools import find_packages, setup

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
