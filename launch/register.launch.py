"""Start register_node (and optionally rviz2) with the shipped config and Fast DDS profile.

    ros2 launch nmr register.launch.py [config:=FILE] [model_rgb_lwir:=M] [model_rgb_depth:=M]
        [backend:=auto|tensorrt|onnxruntime|torch] [device:=auto|cpu|cuda:N] [namespace:=nmr]
        [use_sim_time:=false] [rviz:=false] [fastdds_profile:=FILE]

Model, backend and device arguments left empty keep the values of the config file, so a launch
argument only overrides what it names.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

# launch argument -> register_node parameter (only passed when the argument is not empty)
OVERRIDES = {
    'model_rgb_lwir': 'models.rgb_lwir',
    'model_rgb_depth': 'models.rgb_depth',
    'backend': 'backend',
    'device': 'device',
}


def _truthy(text: str) -> bool:
    return text.strip().lower() in ('1', 'true', 'yes', 'on')


def _register_node(context, *_args, **_kwargs):
    overrides = {}
    for arg, param in OVERRIDES.items():
        value = LaunchConfiguration(arg).perform(context)
        if value:
            overrides[param] = value
    use_sim_time = _truthy(LaunchConfiguration('use_sim_time').perform(context))
    overrides['use_sim_time'] = use_sim_time
    return [
        Node(
            package='nmr',
            executable='register_node',
            name='register_node',
            namespace=LaunchConfiguration('namespace'),
            parameters=[LaunchConfiguration('config'), overrides],
            output='screen',
            emulate_tty=True,
        ),
        Node(
            package='rviz2',
            executable='rviz2',
            name='rviz2',
            arguments=['-d', LaunchConfiguration('rviz_config')],
            parameters=[{'use_sim_time': use_sim_time}],
            condition=IfCondition(LaunchConfiguration('rviz')),
        ),
    ]


def generate_launch_description():
    share = FindPackageShare('nmr')
    config_dir = PathJoinSubstitution([share, 'config'])
    return LaunchDescription([
        DeclareLaunchArgument('config', default_value=PathJoinSubstitution([config_dir, 'register.yaml']),
                              description='register_node parameters file'),
        DeclareLaunchArgument('model_rgb_lwir', default_value='',
                              description="rgb_lwir model (.onnx/.pt); '' = from the config"),
        DeclareLaunchArgument('model_rgb_depth', default_value='',
                              description="rgb_depth model (.onnx/.pt); '' = from the config"),
        DeclareLaunchArgument('backend', default_value='',
                              description="auto | tensorrt | onnxruntime | torch; '' = from the config"),
        DeclareLaunchArgument('device', default_value='',
                              description="auto | cpu | cuda | cuda:N; '' = from the config"),
        DeclareLaunchArgument('namespace', default_value='nmr', description='namespace of the outputs'),
        DeclareLaunchArgument('use_sim_time', default_value='false', description='use /clock (bag replay)'),
        DeclareLaunchArgument('rviz', default_value='false', description='also start rviz2'),
        DeclareLaunchArgument('rviz_config', default_value=PathJoinSubstitution([share, 'rviz', 'nmr.rviz']),
                              description='rviz2 display config'),
        DeclareLaunchArgument('fastdds_profile',
                              default_value=PathJoinSubstitution([config_dir, 'fastdds_large_images.xml']),
                              description='Fast DDS XML profile (16 MB shared memory for images)'),
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', LaunchConfiguration('fastdds_profile')),
        OpaqueFunction(function=_register_node),
    ])
