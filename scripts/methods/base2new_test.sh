#!/usr/bin/env bash
# Base-to-novel evaluation of METHOD alone, without boosting prompts: scripts/caspl/base2new_test.sh
# with CASCADE=0 (same arguments and variables; the method's own published config by default;
# outputs under the trainer name METHOD instead of CasPL_METHOD).
CASCADE=0 exec "$(dirname "${BASH_SOURCE[0]}")/../caspl/base2new_test.sh" "$@"
