# Source this file (bash) to enter the concerto_ros environment: the virtual environment,
# the colcon-built interface packages, and localhost-only DDS discovery unless set.
_concerto_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "${VENV:-$_concerto_root/.venv}/bin/activate"
if [ -f "$_concerto_root/install/local_setup.bash" ]; then
  # shellcheck disable=SC1091
  source "$_concerto_root/install/local_setup.bash"
fi
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
unset _concerto_root
