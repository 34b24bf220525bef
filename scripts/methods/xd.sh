#!/usr/bin/env bash
# Cross-dataset and DG, whole protocol, of METHOD alone, without boosting prompts: scripts/caspl/xd.sh
# with CASCADE=0 (same arguments and variables; the method's own published config by default;
# outputs under the trainer name METHOD instead of CasPL_METHOD).
CASCADE=0 exec "$(dirname "${BASH_SOURCE[0]}")/../caspl/xd.sh" "$@"
