"""Print the errors of an estimated rig file against the true one (e.g. a synthetic bag's rig_true.yaml).

python scripts/compare_rig.py ESTIMATE.yaml TRUE.yaml
"""

from __future__ import annotations

import sys

from nmr.calibration.compare import rig_errors
from nmr.geometry.rig import Rig


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    errors = rig_errors(Rig.load(argv[0]), Rig.load(argv[1]))
    for name, e in errors.items():
        print(f'{name}: rotation {e["rotation_deg"]:.3f} deg, translation {e["translation_mm"]:.1f} mm, '
              f'focal {e["focal_pct"]:.2f} %, time offset {e["time_offset_ms"]:.1f} ms')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
