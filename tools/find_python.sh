#!/usr/bin/env bash
# Print the path of a Python 3.12 interpreter (the megatron-core 0.19 wheel is built for CPython 3.12).
# Order: $PYTHON, python3.12 / python3 on PATH (pyenv shims are probed by running them, since a shim
# exists even when its version is not selected), then any pyenv-installed 3.12.x.
set -u
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' >/dev/null 2>&1; }
for candidate in ${PYTHON:-} python3.12 python3; do
  path=$(command -v "$candidate" 2>/dev/null) || continue
  if ok "$path"; then "$path" -c 'import sys; print(sys.executable)'; exit 0; fi
done
if command -v pyenv >/dev/null 2>&1; then
  for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.|$)' | sort -rV); do
    path="$(pyenv root)/versions/$version/bin/python3"
    if ok "$path"; then echo "$path"; exit 0; fi
  done
fi
echo "error: no Python 3.12 found (megatron-core 0.19 is built for it); install it (e.g. 'apt install python3.12-venv' or 'pyenv install 3.12') or set PYTHON=/path/to/python3.12" >&2
exit 1
