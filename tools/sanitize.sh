#!/usr/bin/env bash
# Memory-safety checks of rnncore's compiled code (rnncore/_kernels.pyx and the headers it includes).
#
#   tools/sanitize.sh [STAGE ...]      STAGE: boundscheck | asan | valgrind | selftest
#                                      (default: boundscheck asan valgrind; about 5 minutes on 2 cores)
#
# Each stage copies the working tree (tracked and untracked files, not ignored ones) into a throwaway
# directory, builds rnncore there and runs a reduced test suite against that copy; the repository and
# the installed (editable) rnncore are never touched, and the copies are deleted at exit.
#
#   boundscheck  RNNCORE_BOUNDSCHECK=1 build (setup.py): Cython checks every memoryview index, so an
#                out-of-range index raises IndexError instead of reading or writing past an array.
#                Finding: any "IndexError: Out of bounds" in the test output.
#   asan         -fsanitize=address build, python run with libasan LD_PRELOADed (python and numpy are
#                not instrumented; rnncore's own C code is, and every heap array gets red zones).
#                Finding: any AddressSanitizer report (ASan stops the process at the first one).
#   valgrind     memcheck on the production build (plus -g), PYTHONMALLOC=malloc. CPython, glibc and
#                BLAS produce known noise, so the finding is: any error whose stack has a frame in
#                rnncore's code (_kernels*.so, _kernels.c/.pyx, _rc_gemm.h, _rc_math.h), including
#                a BLAS call reading past an array rnncore handed it.
#   selftest     proves the three checks can see a bug: adds to the copy a function reading one
#                element past the end of an array and expects each tool to report it.
#
# Exit status: 0 when no stage found anything, 1 otherwise. Test failures that are not memory errors
# (e.g. a bit-identity test) are listed but do not count as findings.
# Logs stay in $RNNCORE_SANITIZE_LOGS (default: a directory under /tmp, printed at the end).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}   # the real binary, not a shim
LOGS=${RNNCORE_SANITIZE_LOGS:-$(mktemp -d /tmp/rnncore-sanitize-logs.XXXXXX)}
WORK=$(mktemp -d /tmp/rnncore-sanitize.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$LOGS"
export OMP_WAIT_POLICY=passive PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(boundscheck asan valgrind)

# The reduced suite: the API tests, the oracle grid, the fuzzer (CI profile), the concurrency and
# determinism tests, without the wall-clock test (meaningless under a sanitizer).
SUITE=(tests/test_api.py tests/test_layers_oracles.py tests/test_fuzz.py tests/test_concurrency.py
       tests/test_determinism.py)
SUITE_K="not release_the_gil"
# RNNCORE_SANITIZE_SUITE="tests/a.py tests/b.py" and RNNCORE_SANITIZE_K=EXPR replace the suite and its
# -k filter (tests/test_sanitize.py runs a smaller one inside the test suite, so in CI).
if [ -n "${RNNCORE_SANITIZE_SUITE:-}" ]; then read -ra SUITE <<<"$RNNCORE_SANITIZE_SUITE"; fi
SUITE_K=${RNNCORE_SANITIZE_K:-$SUITE_K}
# Under valgrind (~50x slower) a smaller one, without torch (tests/conftest.py imports it): the API
# tests, concurrent inference and training (1 and 2 kernel threads, every cell), and one
# determinism test (3 threads, GEMMs split across threads, dropout, ragged lengths).
VG_SUITE=(tests/test_api.py tests/test_concurrency.py tests/test_determinism.py)
VG_K="(test_api and not parameter_names) or (shared_layer_inference and f64) or separate_layers \
or forward_train_from_threads or (bit_identical_whatever_the_thread_count_and_run and lstm_proj-f64-own)"

# ASan goes into CC, not CFLAGS/LDFLAGS: setup.py's OpenMP probe links a test program with the
# plain compiler command, and an ASan object file that does not link would build rnncore silently
# without OpenMP (so without its threads).
ASAN_BUILD=(CC="gcc -fsanitize=address -fno-omit-frame-pointer" CFLAGS="-g")
# whether the installed rnncore has OpenMP: each sanitizer build must have it too
OPENMP=$(cd /tmp && "$PY" -c 'import rnncore; print(rnncore.openmp_enabled())' 2>/dev/null || echo unknown)

SUMMARY=()
FOUND=0

say() { printf '\n== %s\n' "$*"; }

# copy_tree DIR: the working tree into DIR (git's view of it when available)
copy_tree() {
    mkdir -p "$1"
    if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$1")
    else
        (cd "$ROOT" && tar cf - --exclude=build --exclude='*.so' --exclude='.venv*' --exclude=.git . ) | tar xf - -C "$1"
    fi
}

# build DIR [VAR=value ...]: build the extension in place in DIR with the given environment
build() {
    local dir=$1
    shift
    rm -f "$dir"/rnncore/_kernels*.so "$dir"/rnncore/_kernels.c
    if ! (cd "$dir" && env "$@" "$PY" setup.py -q build_ext --inplace >"$dir/build.log" 2>&1); then
        echo "build failed; see $dir/build.log"; tail -20 "$dir/build.log"; return 1
    fi
}

# add_selftest DIR: a function that reads one element past the end of its argument
add_selftest() {
    cat >>"$1/rnncore/_kernels.pyx" <<'EOF'


def _sanitize_selftest(double[::1] a):
    """tools/sanitize.sh selftest: reads a[n], one element past the end (a deliberate bug)."""
    return a[a.shape[0]]
EOF
}

# check_import DIR [launcher ...]: the copy's rnncore is the one imported, with OpenMP as the installed one
check_import() {
    local dir=$1
    shift
    local got
    got=$(cd "$dir" && "$@" "$PY" -c 'import rnncore; print(rnncore.__file__, rnncore.openmp_enabled())' 2>/dev/null | tail -1)
    if [[ "$got" != "$dir"/* ]]; then
        echo "expected rnncore from $dir, got: ${got:-<import failed>}"; return 1
    fi
    if [[ "$OPENMP" != unknown && "$got" != *" $OPENMP" ]]; then
        echo "the installed rnncore has openmp_enabled()=$OPENMP, this build: $got (see $dir/build.log)"; return 1
    fi
}

# pytest_summary LOG: the last "N passed, M failed" line and the failed tests
pytest_summary() {
    grep -E '^(=+ )?[0-9]+ (passed|failed|error)' "$1" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//'
}

# valgrind_report LOGS...: error records with a frame in rnncore's code, and all error records
valgrind_report() {
    "$PY" - "$@" <<'EOF'
import re, sys
ours = re.compile(r"_kernels|_rc_gemm\.h|_rc_math\.h")
total, mine = 0, []
for path in sys.argv[1:]:
    record = []
    for line in open(path, errors="replace"):
        body = re.sub(r"^==\d+== ?", "", line.rstrip("\n"))
        if body.strip():
            record.append(body)
            continue
        if record and not re.match(r"(Memcheck|Copyright|Using Valgrind|Command|Parent PID|HEAP SUMMARY|"
                                    r"LEAK SUMMARY|ERROR SUMMARY|For lists|For counts|Use --|Rerun|"
                                    r"in use at exit|total heap usage|All heap blocks)", record[0]):
            if record[0].startswith(("Invalid", "Conditional", "Use of", "Syscall", "Mismatched",
                                     "Source and destination", "Argument", "Jump", "Process terminating")):
                total += 1
                if any(ours.search(r) for r in record):
                    mine.append(record)
        record = []
print(f"{total} error records in all, {len(mine)} with a frame in rnncore's code")
for r in mine[:20]:
    print("  " + "\n  ".join(r[:14]) + "\n")
sys.exit(1 if mine else 0)
EOF
}

# list_failures LOG: the failed tests (test failures, not memory errors)
list_failures() {
    if grep -qE '^(FAILED|ERROR) ' "$1"; then
        echo "  failed tests (test failures, not memory errors; full output in $1):"
        grep -E '^(FAILED|ERROR) ' "$1" | sed 's/ - .*//; s/^/    /' | head -60
    fi
}

stage_boundscheck() {
    local dir=$WORK/boundscheck log=$LOGS/boundscheck.log
    say "boundscheck: RNNCORE_BOUNDSCHECK=1 build in $dir"
    copy_tree "$dir" && build "$dir" RNNCORE_BOUNDSCHECK=1 && check_import "$dir" || { SUMMARY+=("boundscheck: SETUP FAILED"); FOUND=1; return; }
    grep -q __Pyx_RaiseBufferIndexError "$dir/rnncore/_kernels.c" \
        || { SUMMARY+=("boundscheck: the build has no bounds checks (RNNCORE_BOUNDSCHECK ignored?)"); FOUND=1; return; }
    (cd "$dir" && "$PY" -m pytest -q -p no:cacheprovider "${SUITE[@]}" -k "$SUITE_K") >"$log" 2>&1
    local oob
    oob=$(grep -c "IndexError: Out of bounds\|IndexError.*out of bounds" "$log")
    SUMMARY+=("boundscheck: $oob out-of-bounds index errors; tests: $(pytest_summary "$log")")
    [ "$oob" -eq 0 ] || FOUND=1
    list_failures "$log"
}

stage_asan() {
    local dir=$WORK/asan log=$LOGS/asan.log
    local libasan
    libasan=$(gcc -print-file-name=libasan.so)
    say "asan: -fsanitize=address build in $dir, LD_PRELOAD=$libasan"
    copy_tree "$dir" && build "$dir" "${ASAN_BUILD[@]}" || { SUMMARY+=("asan: SETUP FAILED"); FOUND=1; return; }
    rm -f "$LOGS"/asan-report.*
    local asan_env=(env LD_PRELOAD="$libasan" PYTHONMALLOC=malloc
                    ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:log_path=$LOGS/asan-report")
    check_import "$dir" "${asan_env[@]}" || { SUMMARY+=("asan: SETUP FAILED (import)"); FOUND=1; return; }
    (cd "$dir" && "${asan_env[@]}" "$PY" -m pytest -q -p no:cacheprovider "${SUITE[@]}" -k "$SUITE_K") >"$log" 2>&1
    local reports
    reports=$(ls "$LOGS"/asan-report.* 2>/dev/null | wc -l)
    SUMMARY+=("asan: $reports AddressSanitizer reports; tests: $(pytest_summary "$log")")
    if [ "$reports" -gt 0 ]; then
        FOUND=1
        head -40 "$LOGS"/asan-report.*
    fi
    list_failures "$log"
}

stage_valgrind() {
    local dir=$WORK/valgrind log=$LOGS/valgrind.log
    say "valgrind: memcheck, production build with -g in $dir"
    command -v valgrind >/dev/null || { SUMMARY+=("valgrind: NOT INSTALLED (apt-get install valgrind)"); FOUND=1; return; }
    copy_tree "$dir" && build "$dir" CFLAGS="-g -fno-omit-frame-pointer" && check_import "$dir" \
        || { SUMMARY+=("valgrind: SETUP FAILED"); FOUND=1; return; }
    rm -f "$LOGS"/vg.*.log
    (cd "$dir" && PYTHONMALLOC=malloc valgrind --tool=memcheck --error-limit=no --num-callers=40 \
        --log-file="$LOGS/vg.%p.log" "$PY" -m pytest -q -p no:cacheprovider --noconftest \
        "${VG_SUITE[@]}" -k "$VG_K") >"$log" 2>&1
    local verdict
    verdict=$(valgrind_report "$LOGS"/vg.*.log) || FOUND=1
    echo "$verdict"
    SUMMARY+=("valgrind: $(echo "$verdict" | head -1); tests: $(pytest_summary "$log")")
    list_failures "$log"
}

stage_selftest() {
    local dir=$WORK/selftest ok=1 out
    say "selftest: each tool must report a deliberate read one past the end of an array"
    copy_tree "$dir" && add_selftest "$dir" || { SUMMARY+=("selftest: SETUP FAILED"); FOUND=1; return; }
    local call='import numpy as np, rnncore._kernels as K; print(K._sanitize_selftest(np.zeros(8)))'
    # bounds checks: IndexError (captured first: with pipefail, `python | grep -q` would fail on
    # python's exit status)
    build "$dir" RNNCORE_BOUNDSCHECK=1 || ok=0
    out=$(cd "$dir" && "$PY" -c "$call" 2>&1)
    if grep -q "IndexError" <<<"$out"; then
        SUMMARY+=("selftest boundscheck: caught (IndexError)")
    else SUMMARY+=("selftest boundscheck: NOT CAUGHT: $(echo "$out" | tail -3)"); ok=0; fi
    # ASan: heap-buffer-overflow in _kernels
    build "$dir" "${ASAN_BUILD[@]}" || ok=0
    out=$(cd "$dir" && LD_PRELOAD=$(gcc -print-file-name=libasan.so) PYTHONMALLOC=malloc \
          ASAN_OPTIONS=detect_leaks=0 "$PY" -c "$call" 2>&1)
    if grep -q "heap-buffer-overflow" <<<"$out" && grep -q "_kernels" <<<"$out"; then
        SUMMARY+=("selftest asan: caught ($(echo "$out" | grep -m1 -o 'READ of size [0-9]*'))")
    else SUMMARY+=("selftest asan: NOT CAUGHT"); ok=0; fi
    # valgrind: invalid read with a frame in _kernels
    if command -v valgrind >/dev/null; then
        build "$dir" CFLAGS="-g -fno-omit-frame-pointer" || ok=0
        rm -f "$LOGS"/selftest-vg.*.log
        (cd "$dir" && PYTHONMALLOC=malloc valgrind --tool=memcheck --log-file="$LOGS/selftest-vg.%p.log" \
            "$PY" -c "$call" >/dev/null 2>&1)
        if valgrind_report "$LOGS"/selftest-vg.*.log >/dev/null; then
            SUMMARY+=("selftest valgrind: NOT CAUGHT"); ok=0
        else
            SUMMARY+=("selftest valgrind: caught ($(valgrind_report "$LOGS"/selftest-vg.*.log | sed -n 2p | sed 's/^ *//'))")
        fi
    fi
    [ "$ok" -eq 1 ] || FOUND=1
}

START=$SECONDS
for s in "${STAGES[@]}"; do
    case "$s" in
        boundscheck|asan|valgrind|selftest) "stage_$s" ;;
        *) echo "unknown stage '$s' (boundscheck, asan, valgrind, selftest)"; exit 2 ;;
    esac
done

say "summary ($((SECONDS - START)) s; logs in $LOGS)"
printf '  %s\n' "${SUMMARY[@]}"
if [ "$FOUND" -eq 0 ]; then
    echo "  => no memory errors found in rnncore's code"
else
    echo "  => FINDINGS (see above and the logs)"
fi
exit "$FOUND"
