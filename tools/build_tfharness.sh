#!/usr/bin/env bash
# Rebuild, from scratch, a harness that runs transformers' OWN model test-suites (Qwen2-VL, Qwen2.5-VL,
# LLaVA-OneVision, Qwen3-VL, Qwen3-VL-MoE, Qwen3.5, Qwen3.5-MoE, InternVL) with the stock model classes swapped for
# subclasses named by env vars (QWEN2VL_CLS, QWEN25VL_CLS, LLAVA_OV_CLS, QWEN3VL_CLS, QWEN3VLMOE_CLS, QWEN35_CLS,
# QWEN35MOE_CLS, INTERNVL_CLS = "module:ClassName", e.g.
# "hf_tokcomp:Qwen2VLForConditionalGeneration"); TOKCOMP_FORCE_KEEP=0.5 forces hf_tokcomp's token_keep default.
#
# Layout made:  $ROOT_DIR/venv            python venv: torch (CPU) + hf_tokcomp (editable) + pinned deps + test deps
#               $ROOT_DIR/tfharness/      tests/ tree, conftest.py, pytest.ini, run_with_subclass.sh, PATCHES.md
#
# Sources of the test files (nothing of them is stored in this script):
#   1. PyPI sdist transformers==5.23.0 (`pip download --no-binary :all:`): it ships only tests/*.py (top level:
#      test_modeling_common, test_configuration_common, test_pipeline_mixin, test_processing_common, ...).
#      These are used as-is (exact 5.23.0).
#   2. Everything else (tests/generation/test_utils.py, tests/exporters/test_export.py, tests/utils/*,
#      tests/vlm_tester.py, tests/multimodal_tester.py, tests/models/<model>/test_modeling_*.py) is not in the
#      sdist. It is taken from a git clone of transformers that holds commit $TF_GIT_COMMIT (upstream main,
#      2026-08-19, 5.16.0.dev0: the newest upstream commit reachable here; the 5.23.0 tag was not). Default
#      clone: github.com/zucchini-nlp/transformers (a fork whose main is upstream main
#      at that commit). Any transformers clone with that commit works: TF_GIT_DIR=/path/to/.git.
#
# Usage: build_tfharness.sh            (env: ROOT_DIR, HF_TOKCOMP_DIR, TF_GIT_DIR, PYTHON, SKIP_VENV=1)
set -euo pipefail

ROOT_DIR=${ROOT_DIR:-$HOME/.cache/hf_tokcomp-tfharness}
HARNESS=$ROOT_DIR/tfharness
VENV=$ROOT_DIR/venv
MAIN=${HF_TOKCOMP_DIR:-$(git rev-parse --show-toplevel 2>/dev/null || pwd)}  # run from the project checkout
PYTHON=${PYTHON:-python3}
TF_VERSION=5.23.0
TF_GIT_DIR=${TF_GIT_DIR:?set TF_GIT_DIR to the git dir of a transformers clone holding the commit below (e.g. a clone of github.com/zucchini-nlp/transformers, whose main holds it)}
TF_GIT_COMMIT=decba1d2ea4ed3cbf0495d1828abad4b2dba1846
MODELS="qwen2_vl qwen2_5_vl llava_onevision qwen3_vl qwen3_vl_moe qwen3_5 qwen3_5_moe internvl"
log() { printf '[build_tfharness] %s\n' "$*" >&2; }

# ---- 1. venv -------------------------------------------------------------------------------------------------
if [ "${SKIP_VENV:-0}" != 1 ] && [ ! -f "$VENV/.ok" ]; then
  log "creating $VENV (torch==2.13.0 CPU, $MAIN requirements.lock, hf_tokcomp -e, test deps)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  PIP="$VENV/bin/pip install --quiet --disable-pip-version-check"
  $PIP torch==2.13.0
  if [ -f "$MAIN/requirements.lock" ]; then $PIP -r "$MAIN/requirements.lock"; fi
  $PIP --no-deps -e "$MAIN"
  $PIP parameterized pytest-timeout pytest-xdist timeout-decorator httpx requests
  touch "$VENV/.ok"
fi
PY=$VENV/bin/python
got=$("$PY" -c 'import transformers; print(transformers.__version__)')
[ "$got" = "$TF_VERSION" ] || { log "venv has transformers $got, need $TF_VERSION"; exit 1; }

# ---- 2. sources ----------------------------------------------------------------------------------------------
DL=$ROOT_DIR/dl
mkdir -p "$DL"
SDIST=$DL/transformers-$TF_VERSION.tar.gz
if [ ! -f "$SDIST" ]; then
  log "pip download transformers==$TF_VERSION sdist"
  "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-binary :all: --no-deps \
    "transformers==$TF_VERSION" -d "$DL"
fi
if ! git --git-dir="$TF_GIT_DIR" cat-file -e "$TF_GIT_COMMIT^{commit}" 2>/dev/null; then
  log "no transformers git clone with commit $TF_GIT_COMMIT at TF_GIT_DIR=$TF_GIT_DIR."
  log "get one: a git clone of github.com/zucchini-nlp/transformers (main holds that upstream commit),"
  log "or point TF_GIT_DIR at any transformers clone holding that upstream commit."
  exit 2
fi

rm -rf "$HARNESS"
mkdir -p "$HARNESS"
cd "$HARNESS"
log "tests/*.py from the $TF_VERSION sdist"
tar xzf "$SDIST" -C "$HARNESS" --strip-components=1 --wildcards "transformers-$TF_VERSION/tests/*.py"
GIT_FILES="tests/__init__.py tests/vlm_tester.py tests/multimodal_tester.py tests/causal_lm_tester.py
  tests/generation/__init__.py tests/generation/test_utils.py
  tests/exporters/__init__.py tests/exporters/test_export.py
  tests/utils/__init__.py tests/utils/test_configuration_utils.py tests/utils/tiny_model_summary.json utils/test_module utils/fetch_hub_objects_for_ci.py
  tests/models/__init__.py"
for m in $MODELS; do GIT_FILES="$GIT_FILES tests/models/$m/__init__.py tests/models/$m/test_modeling_$m.py"; done
log "other test files from $TF_GIT_DIR @ $TF_GIT_COMMIT"
# shellcheck disable=SC2086
git --git-dir="$TF_GIT_DIR" archive "$TF_GIT_COMMIT" $GIT_FILES | tar x -C "$HARNESS"
# test_pipeline_mixin imports <root>/src/transformers by path: point it at the installed 5.23.0 package
mkdir -p src
ln -s "$("$PY" -c 'import os, transformers; print(os.path.dirname(transformers.__file__))')" src/transformers
# the sdist's files win where both have one (none overlap today)
tar xzf "$SDIST" -C "$HARNESS" --strip-components=1 --wildcards "transformers-$TF_VERSION/tests/*.py"
# the sdist's FSDP / tensor / expert parallel mixins import tests/distributed_testing_utils.py, which neither
# source ships (and the git commit's copies need a newer transformers). Their tests need several GPUs (skipped on
# CPU), so an empty mixin of the same name stands in for each (causal_lm_tester.py, which the Qwen3.5 suites use,
# imports them).
STANDINS=""
if [ ! -f tests/distributed_testing_utils.py ]; then
  for f in $(grep -l "distributed_testing_utils" tests/*.py); do
    names=$(grep -oE '^class [A-Za-z]+Mixin' "$f" | cut -d' ' -f2)
    { echo '"""Stand-in written by build_tfharness.sh: these tests need several GPUs."""'
      for n in $names; do printf '\n\nclass %s:\n    pass\n' "$n"; done; } > "$f.new"
    mv "$f.new" "$f"
    STANDINS="$STANDINS ${f#tests/}($names)"
  done
fi
{
  echo "# Provenance"
  echo "- tests/*.py (top level): PyPI sdist transformers==$TF_VERSION ($(sha256sum "$SDIST" | cut -c1-16)...)"
  echo "- the rest: git $TF_GIT_COMMIT ($(git --git-dir="$TF_GIT_DIR" log -1 --format='%ad %s' --date=short "$TF_GIT_COMMIT"))"
  echo "  files: $(echo $GIT_FILES)"
  echo
  [ -z "$STANDINS" ] || echo "- empty stand-ins (they import tests/distributed_testing_utils.py, in neither source; multi-GPU tests):$STANDINS"
  echo
  echo "# Patches (each applied by build_tfharness.sh; a patch whose anchor is missing fails the build)"
} > PATCHES.md

# ---- 3. patches for 5.23 compatibility (recorded in PATCHES.md) ----------------------------------------------
"$PY" - <<'PYEOF'
import pathlib, re, sys

ROOT = pathlib.Path(".")
notes = []

def patch(path, old, new, why, count=1):
    p = ROOT / path
    text = p.read_text()
    n = text.count(old)
    if n != count:
        sys.exit(f"patch anchor for {path} found {n} times (want {count}): {old[:80]!r}")
    p.write_text(text.replace(old, new))
    notes.append(f"- `{path}`: {why}")

PATCHES_PLACEHOLDER = True
# (patches are appended below as they are found necessary)
#@@PATCHES@@
patch("tests/models/llava_onevision/test_modeling_llava_onevision.py",
      'inputs_dict = {"pixel_values": pixel_values_videos}',
      'inputs_dict = {"pixel_values_videos": pixel_values_videos}',
      "the test's `_video_features_prepare_config_and_inputs` override passes `pixel_values=`; in 5.23 "
      "`LlavaOnevision*.get_video_features` takes `pixel_values_videos` (fixes 6 stock failures of "
      "test_get_video_features_*: TypeError missing 'pixel_values_videos').")
patch("tests/multimodal_tester.py",
      "                kwargs[k] = getattr(self, k)\n            elif k in model_name_to_common_name",
      "                kwargs[k] = copy.deepcopy(getattr(self, k))\n            elif k in model_name_to_common_name",
      "`_collect_kwargs` hands the same `rope_parameters` dict to the text and the vision sub-config; 5.23's "
      "Qwen3VLVisionConfig (axial vision RoPE, new after the test files' commit) writes rope_type='axial' into it, "
      "which the text RoPE then cannot build (KeyError: 'axial', 26 stock Qwen3-VL failures). Each sub-config "
      "now gets its own copy.")
patch("tests/multimodal_tester.py", "from inspect import signature\n", "import copy\nfrom inspect import signature\n",
      "(import for the previous patch)")

with open("PATCHES.md", "a") as f:
    f.write("\n".join(notes) + ("\n" if notes else "- none\n"))
PYEOF

# ---- 4. conftest.py, pytest.ini, run script ------------------------------------------------------------------
cat > pytest.ini <<'EOF'
[pytest]
# transformers' own markers, registered so that they do not warn
markers =
    slow
    generate
    is_pipeline_test
    is_staging_test
    accelerate_tests
    not_device_test
    torch_compile_test
    torch_export_test
    flash_attn_test
    flash_attn_3_test
    flash_attn_4_test
    training_ci
    tensor_parallel_ci
    bitsandbytes
    hub_test
    hub_mock_test
    fsdp_ci
    all_flash_attn_test
    is_training_test
    is_tensor_parallel_test
    is_fsdp_test
    onnx_export_test
    executorch_export_test
    dynamo_export_test
    openvino_export_test
python_files = test_*.py
addopts = -p no:cacheprovider
EOF

cat > conftest.py <<'EOF'
"""Swap the stock model classes for the subclasses named by env vars, before any test module is imported.

QWEN2VL_CLS / QWEN25VL_CLS / LLAVA_OV_CLS / QWEN3VL_CLS / QWEN3VLMOE_CLS / QWEN35_CLS / QWEN35MOE_CLS / INTERNVL_CLS =
"module:ClassName". The class replaces the stock one in
the `transformers` top-level namespace, in `transformers.models.<model>` and in its modeling module (the places
the test files and the auto classes take it from). TOKCOMP_FORCE_KEEP=<float> sets the default `token_keep` of
every hf_tokcomp *CompressionConfig (a stock config given to an hf_tokcomp model is converted with it).
"""

import importlib
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import transformers  # noqa: E402

SWAPS = {
    # env var: (stock class name, model package)
    "QWEN2VL_CLS": ("Qwen2VLForConditionalGeneration", "qwen2_vl"),
    "QWEN25VL_CLS": ("Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl"),
    "LLAVA_OV_CLS": ("LlavaOnevisionForConditionalGeneration", "llava_onevision"),
    "QWEN3VL_CLS": ("Qwen3VLForConditionalGeneration", "qwen3_vl"),
    "QWEN3VLMOE_CLS": ("Qwen3VLMoeForConditionalGeneration", "qwen3_vl_moe"),
    "QWEN35_CLS": ("Qwen3_5ForConditionalGeneration", "qwen3_5"),
    "QWEN35MOE_CLS": ("Qwen3_5MoeForConditionalGeneration", "qwen3_5_moe"),
    "INTERNVL_CLS": ("InternVLForConditionalGeneration", "internvl"),
}
IN_USE = {}


def _load(spec):
    module_name, _, cls_name = spec.partition(":")
    if not cls_name:
        raise SystemExit(f"bad class spec {spec!r}: want module:ClassName")
    return getattr(importlib.import_module(module_name), cls_name)


def _force_keep(value):
    import hf_tokcomp.models as hm

    for name in dir(hm):
        cfg = getattr(hm, name)
        if not (isinstance(cfg, type) and name.endswith("CompressionConfig")):
            continue
        original_init = cfg.__init__

        def init(self, *args, _orig=original_init, **kwargs):
            kwargs.setdefault("token_keep", value)
            _orig(self, *args, **kwargs)

        cfg.__init__ = init
        fields = getattr(cfg, "__dataclass_fields__", {})
        if "token_keep" in fields:
            fields["token_keep"].default = value
        cfg.token_keep = value
    return value


SWAPPED = []  # (name, model package, new class)


def _apply():
    """Put each chosen class into every place it is taken from. `transformers` is a lazy module that caches what
    it resolved in its own __dict__, and the test infrastructure re-executes transformers/__init__.py
    (test_pipeline_mixin's `direct_transformers_import`), which replaces sys.modules["transformers"]: so the
    current module object is patched, not only the one imported above."""
    for name, pkg, new in SWAPPED:
        modeling = importlib.import_module(f"transformers.models.{pkg}.modeling_{pkg}")
        package = importlib.import_module(f"transformers.models.{pkg}")
        for mod in (sys.modules["transformers"], transformers, package, modeling):
            setattr(mod, name, new)


def _swap():
    # resolve every subclass first: their modules import the stock classes, which must still be stock then
    chosen = {var: _load(os.environ[var]) for var in SWAPS if os.environ.get(var)}
    keep = os.environ.get("TOKCOMP_FORCE_KEEP")
    if keep:
        _force_keep(float(keep))
    # import the shared test infrastructure now: it re-executes transformers/__init__.py (see _apply)
    for mod in ("tests.test_modeling_common", "tests.test_pipeline_mixin", "tests.generation.test_utils",
                "tests.vlm_tester"):
        importlib.import_module(mod)
    for var, (name, pkg) in SWAPS.items():
        stock = getattr(importlib.import_module(f"transformers.models.{pkg}.modeling_{pkg}"), name)
        new = chosen.get(var, stock)
        if new is not stock:
            if not issubclass(new, stock):
                raise SystemExit(f"{var}: {new} is not a subclass of {stock}")
            SWAPPED.append((name, pkg, new))
        IN_USE[name] = f"{new.__module__}.{new.__qualname__}"
    IN_USE["token_keep default"] = keep or "1.0 (package default)"
    _apply()


_swap()
_BANNER = "model classes in use:\n" + "\n".join(f"  {k:45s} {v}" for k, v in IN_USE.items())


def pytest_pycollect_makemodule(module_path, parent):
    _apply()  # again, right before each test module is imported


def pytest_collection_finish(session):
    """Check that every collected test module holds the chosen classes under the stock names."""
    bad = []
    for module in {item.module for item in session.items if hasattr(item, "module")}:
        for name, _, new in SWAPPED:
            got = getattr(module, name, new)
            if got is not new:
                bad.append(f"{module.__name__}.{name} = {got.__module__}.{got.__qualname__}")
    if bad:
        raise SystemExit("class swap did not reach the test modules:\n  " + "\n  ".join(bad))


def pytest_report_header(config):
    return _BANNER


def pytest_sessionstart(session):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and session.config.option.verbose < 0:  # -q hides the report header
        reporter.write_line(_BANNER)
EOF

cat > run_with_subclass.sh <<'EOF'
#!/usr/bin/env bash
# Run transformers' model tests for every family above with the classes named by
# QWEN2VL_CLS / QWEN25VL_CLS / LLAVA_OV_CLS / QWEN3VL_CLS / QWEN3VLMOE_CLS / QWEN35_CLS / QWEN35MOE_CLS / INTERNVL_CLS
# (unset = stock) and optional TOKCOMP_FORCE_KEEP.
# Extra args go to pytest (e.g. -k generate, -x, -n 2, a single file). Prints pytest's summary line.
# SUBCLASS_DEFAULTS=1 sets hf_tokcomp's class of every family for the unset vars.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT_DIR=${ROOT_DIR:-$(dirname "$HERE")}
PY=${PY:-$ROOT_DIR/venv/bin/python}
if [ "${SUBCLASS_DEFAULTS:-0}" = 1 ]; then
  export QWEN2VL_CLS=${QWEN2VL_CLS:-hf_tokcomp:Qwen2VLForConditionalGeneration}
  export QWEN25VL_CLS=${QWEN25VL_CLS:-hf_tokcomp:Qwen2_5_VLForConditionalGeneration}
  export LLAVA_OV_CLS=${LLAVA_OV_CLS:-hf_tokcomp:LlavaOnevisionForConditionalGeneration}
  export QWEN3VL_CLS=${QWEN3VL_CLS:-hf_tokcomp:Qwen3VLForConditionalGeneration}
  export QWEN3VLMOE_CLS=${QWEN3VLMOE_CLS:-hf_tokcomp:Qwen3VLMoeForConditionalGeneration}
  export QWEN35_CLS=${QWEN35_CLS:-hf_tokcomp:Qwen3_5ForConditionalGeneration}
  export QWEN35MOE_CLS=${QWEN35MOE_CLS:-hf_tokcomp:Qwen3_5MoeForConditionalGeneration}
  export INTERNVL_CLS=${INTERNVL_CLS:-hf_tokcomp:InternVLForConditionalGeneration}
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONDONTWRITEBYTECODE=1
FILES=()
have_path=0
for a in "$@"; do case "$a" in tests/*|*/tests/*) have_path=1;; esac; done
if [ $have_path = 0 ]; then
  for m in qwen2_vl qwen2_5_vl llava_onevision qwen3_vl qwen3_vl_moe qwen3_5 qwen3_5_moe internvl; do
    FILES+=("tests/models/$m/test_modeling_$m.py")
  done
fi
cd "$HERE"
LOG=${LOG:-$(mktemp /tmp/tfharness.XXXXXX.log)}
start=$(date +%s)
"$PY" -m pytest -q -rfE --timeout=${TEST_TIMEOUT:-600} -p no:randomly "${FILES[@]}" "$@" > "$LOG" 2>&1
rc=$?
end=$(date +%s)
grep -A8 '^model classes in use' "$LOG" | head -6 >&2 || true
echo "log: $LOG  wall: $((end - start)) s  rc: $rc"
tail -n 1 "$LOG"
exit $rc
EOF
chmod +x run_with_subclass.sh

cat > summarize_failures.py <<'EOF2'
"""summarize_failures.py LOG: one line per failed test of a run_with_subclass.sh log, 'Class.test | error line'.
summarize_failures.py STOCK_LOG SUBCLASS_LOG: only the tests that fail in SUBCLASS_LOG but not in STOCK_LOG."""
import re
import sys


def failures(path):
    text = open(path, errors="replace").read()
    parts = re.split(r"\n_+ (\S.+?) _+\n", text)
    out = {}
    for i in range(1, len(parts) - 1, 2):
        lines = [line[4:].strip() for line in parts[i + 1].splitlines() if line.startswith("E   ")]
        exc = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Warning)\b", line)]
        out[parts[i].strip()] = ((exc[-1] if exc else lines[0]) if lines else "?")[:240]
    return out


if __name__ == "__main__":
    first = failures(sys.argv[1])
    if len(sys.argv) == 2:
        for name, err in sorted(first.items()):
            print(f"{name} | {err}")
    else:  # regressions: failing in the second log, not in the first
        second = failures(sys.argv[2])
        for name, err in sorted(second.items()):
            if name not in first:
                print(f"{name} | {err}")
EOF2

log "collecting"
"$PY" -m pytest -q --collect-only tests/models > collect.log 2>&1 || true
tail -n 1 collect.log >&2
log "done: $HARNESS (see PATCHES.md; run ./run_with_subclass.sh)"
