#!/usr/bin/env sh
# CrossHair over Servo's PEP 316 contracts (`pre:` / `post:` docstring lines).
# tox-friendly: exit 0 when every condition holds, 1 with `file:line: error: false
# when calling f(args)` on a counterexample. Same as `python -m model_checks --crosshair`.
set -eu
cd "$(dirname "$0")/.."
exec crosshair check --per_condition_timeout "${CROSSHAIR_TIMEOUT:-5}" \
    servo/core/ids.py \
    servo/core/controllers/_timers.py
