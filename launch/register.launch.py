"""Start register_node (and optionally rviz2) with the shipped config and Fast DDS profile.

    ros2 launch nmr register.launch.py [config:=FILE] [model_rgb_lwir:=M] [model_rgb_depth:=M] [rig:=RIG.yaml]
        [residual:=true|false]
        [backend:=auto|tensorrt|onnxruntime|torch] [device:=auto|cpu|cuda:N] [namespace:=nmr]
        [rgb_topic:=T] [lwir_topic:=T] [depth_topic:=T] [use_sim_time:=false]
        [rviz:=false] [rviz_config:=FILE] [fixed_frame:=F] [fastdds_profile:=FILE]

Model, backend, device and topic arguments left empty keep the values of the config file, so a launch
argument only overrides what it names.

rviz2 is not a hard dependency (heavy on a headless robot): with `rviz:=true` and no rviz2 installed, the
launch stops with one line before it starts anything, so no register_node is left running without its
launch. The shipped rviz config is rewritten for the `namespace`, the topic arguments and `fixed_frame`.
"""

import os
import tempfile

import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

# launch argument -> register_node parameter (only passed when the argument is not empty)
OVERRIDES = {
    'model_rgb_lwir': 'models.rgb_lwir',
    'model_rgb_depth': 'models.rgb_depth',
    'backend': 'backend',
    'device': 'device',
    'rgb_topic': 'topics.rgb',
    'lwir_topic': 'topics.lwir',
    'depth_topic': 'topics.depth',
    'rig': 'rig',
}
# the input topics the shipped rviz config shows (the node's defaults)
RVIZ_INPUTS = {
    'rgb_topic': '/camera/camera/color/image_raw',
    'lwir_topic': '/flir_boson/image_raw',
    'depth_topic': '/camera/camera/depth/image_rect_raw',
}
RVIZ_NAMESPACE = '/nmr/'  # the namespace the shipped rviz config's output topics are written for


class RvizMissingError(RuntimeError):
    """rviz:=true without rviz2 installed (launch prints the message as one line)."""


def _truthy(text: str) -> bool:
    return text.strip().lower() in ('1', 'true', 'yes', 'on')


def rviz2_installed() -> bool:
    """rviz2 is in the ament index (sourced ROS 2 installation)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:
        return False
    try:
        get_package_prefix('rviz2')
    except (PackageNotFoundError, ValueError, LookupError, OSError):  # OSError: no AMENT_PREFIX_PATH
        return False
    return True


def rviz_config_for(template: str, namespace: str, fixed_frame: str, inputs: dict) -> str:
    """A copy of the rviz config for this launch: outputs under `namespace`, `inputs` (launch argument ->
    topic) instead of the default input topics, and `fixed_frame` as rviz's fixed frame."""
    with open(template) as f:
        doc = yaml.safe_load(f)
    prefix = '/' + namespace.strip('/') + '/' if namespace.strip('/') else '/'
    replace = {RVIZ_INPUTS[arg]: topic for arg, topic in inputs.items() if topic}
    for display in doc['Visualization Manager']['Displays']:
        topic = display.get('Topic', {})
        value = topic.get('Value', '')
        if value.startswith(RVIZ_NAMESPACE):
            topic['Value'] = prefix + value[len(RVIZ_NAMESPACE):]
        elif value in replace:
            topic['Value'] = replace[value]
    doc['Visualization Manager']['Global Options']['Fixed Frame'] = fixed_frame
    handle, path = tempfile.mkstemp(prefix='nmr_', suffix='.rviz')
    with os.fdopen(handle, 'w') as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def _actions(context, *_args, **_kwargs):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    use_sim_time = _truthy(arg('use_sim_time'))
    rviz = _truthy(arg('rviz'))
    if rviz and not rviz2_installed():  # before any process starts: nothing is left orphaned
        raise RvizMissingError('rviz:=true but rviz2 is not installed: install it (apt install '
                          'ros-$ROS_DISTRO-rviz2) or launch with rviz:=false')
    overrides = {param: arg(name) for name, param in OVERRIDES.items() if arg(name)}
    if arg('residual'):
        overrides['residual'] = _truthy(arg('residual'))
    overrides['use_sim_time'] = use_sim_time
    namespace = arg('namespace')
    actions = [
        Node(
            package='nmr',
            executable='register_node',
            name='register_node',
            namespace=namespace,
            parameters=[arg('config'), overrides],
            output='screen',
            emulate_tty=True,
        ),
    ]
    if rviz:
        config = arg('rviz_config') or rviz_config_for(
            arg('rviz_template'), namespace, arg('fixed_frame'), {name: arg(name) for name in RVIZ_INPUTS})
        actions.append(Node(
            package='rviz2',
            executable='rviz2',
            name='rviz2',
            arguments=['-d', config],
            parameters=[{'use_sim_time': use_sim_time}],
        ))
    return actions


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
        DeclareLaunchArgument('rig', default_value='',
                              description="rig file (RIG.yaml from nmr calibrate): register through the depth "
                                          "camera's depth; '' = from the config (default: off)"),
        DeclareLaunchArgument('residual', default_value='',
                              description="with a rig: true = also the network's residual; '' = from the config"),
        DeclareLaunchArgument('backend', default_value='',
                              description="auto | tensorrt | onnxruntime | torch; '' = from the config"),
        DeclareLaunchArgument('device', default_value='',
                              description="auto | cpu | cuda | cuda:N; '' = from the config"),
        DeclareLaunchArgument('rgb_topic', default_value='',
                              description="RGB image topic (e.g. /camera/camera/color/image_raw); '' = config"),
        DeclareLaunchArgument('lwir_topic', default_value='',
                              description="LWIR image topic (e.g. /flir_boson/image_raw); '' = config"),
        DeclareLaunchArgument('depth_topic', default_value='',
                              description="depth image topic (e.g. /camera/camera/depth/image_rect_raw); '' = config"),
        DeclareLaunchArgument('namespace', default_value='nmr', description='namespace of the outputs'),
        DeclareLaunchArgument('use_sim_time', default_value='false', description='use /clock (bag replay)'),
        DeclareLaunchArgument('rviz', default_value='false', description='also start rviz2 (must be installed)'),
        DeclareLaunchArgument('rviz_config', default_value='',
                              description="rviz2 display config; '' = the shipped one for this namespace/topics"),
        DeclareLaunchArgument('rviz_template', default_value=PathJoinSubstitution([share, 'rviz', 'nmr.rviz']),
                              description='the shipped rviz2 config that rviz_config defaults to'),
        DeclareLaunchArgument('fixed_frame', default_value='flir_boson_optical_frame',
                              description="rviz fixed frame: the LWIR camera's frame_id (outputs are on its grid)"),
        DeclareLaunchArgument('fastdds_profile',
                              default_value=PathJoinSubstitution([config_dir, 'fastdds_large_images.xml']),
                              description='Fast DDS XML profile (16 MB shared memory for images)'),
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', LaunchConfiguration('fastdds_profile')),
        OpaqueFunction(function=_actions),
    ])
