#!/usr/bin/env bash
# Domain generalisation: xd_test.sh on ImageNet-V2, -Sketch, -A and -R (the authors' scripts leave
# out ImageNet-A; it is here, set TARGETS to drop it). The source accuracy is xd_train.sh's own test.
#
#   scripts/caspl/dg_test.sh SEED METHOD [OPTS...]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../common.sh"

TARGETS=${TARGETS:-$DG_TARGETS} exec "$HERE/xd_test.sh" "$@"
