#!/usr/bin/env bash
# peers.sh - hand-run benchmark: driftwatch against its real peers
# (b3sum, find -printf, AIDE) on the SAME tree in the SAME run.
#
# Usage: agent/benches/peers.sh [options]
#
#   --tree DIR         tree to scan (default: a `cp -a /usr` copy kept at
#                      $BENCH_DIR/usr, made on first use and reused after)
#   --runs N           timed runs per measurement; the median wall time is
#                      reported, peak RSS is the max over runs (default: 3)
#   --aide-runs N      timed runs for each AIDE step (default: 1, because one
#                      AIDE check of /usr takes minutes)
#   --aide-workers N   AIDE num_workers (default: nproc, so AIDE hashes on as
#                      many cores as driftwatch and the b3sum pipeline)
#   --cold             drop the page cache before every timed run
#                      (needs root; fails loudly if it cannot)
#   --threads-sweep    also time `verify --threads T` for T in 2, 4, 8
#   --peers-only       skip building and timing driftwatch (peers only)
#   --skip-aide        skip AIDE (it dominates the total run time)
#   -h, --help         show this help
#
# Environment: BENCH_DIR (default /var/tmp/driftwatch-bench) holds the tree
# copy, the temporary work dir and results.md; CARGO_TARGET_DIR is honoured.
#
# Output: a Markdown table on stdout (progress goes to stderr), also written
# to $BENCH_DIR/results.md. Needs: b3sum, aide, GNU time (/usr/bin/time),
# GNU find, jq, cargo. On Debian: apt-get install -y b3sum aide time jq

set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
# agent/benches/ -> repo root; resolved from the script, not from $PWD, so the
# script works from any directory.
REPO_ROOT="$(cd -- "$SCRIPT_DIR/../.." && pwd)"
BENCH_DIR="${BENCH_DIR:-/var/tmp/driftwatch-bench}"
JOBS="$(nproc)"
readonly SCRIPT_DIR REPO_ROOT BENCH_DIR JOBS
readonly SWEEP_THREADS=(2 4 8)

TREE=""
RUNS=3
AIDE_RUNS=1
AIDE_WORKERS="$JOBS"
COLD=0
THREADS_SWEEP=0
PEERS_ONLY=0
SKIP_AIDE=0

WORK=""          # temp dir under BENCH_DIR, removed on exit
DW_BIN=""        # driftwatch-agent binary
declare -A WALL  # measurement id -> median wall seconds
declare -A RSS   # measurement id -> peak RSS in KB (max over runs)
declare -A LABEL # measurement id -> human label used in failure messages

log() { printf '>> %s\n' "$*" >&2; }
die() {
	printf 'peers.sh: error: %s\n' "$*" >&2
	exit 1
}

usage() {
	# The header comment is the help text; print it without the '# '.
	sed -n '2,/^$/{/^$/q;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

cleanup() {
	# Keep the tree copy (expensive to make) but nothing else.
	if [[ -n "$WORK" && -d "$WORK" ]]; then
		rm -rf -- "$WORK"
	fi
}

parse_args() {
	while (($# > 0)); do
		case "$1" in
		--tree) TREE="${2:?--tree needs a directory}" && shift ;;
		--runs) RUNS="${2:?--runs needs a number}" && shift ;;
		--aide-runs) AIDE_RUNS="${2:?--aide-runs needs a number}" && shift ;;
		--aide-workers) AIDE_WORKERS="${2:?--aide-workers needs a number}" && shift ;;
		--cold) COLD=1 ;;
		--threads-sweep) THREADS_SWEEP=1 ;;
		--peers-only) PEERS_ONLY=1 ;;
		--skip-aide) SKIP_AIDE=1 ;;
		-h | --help) usage && exit 0 ;;
		*) usage >&2 && die "unknown argument: $1" ;;
		esac
		shift
	done
	local n
	for n in "$RUNS" "$AIDE_RUNS" "$AIDE_WORKERS"; do
		[[ "$n" =~ ^[1-9][0-9]*$ ]] || die "expected a positive integer, got '$n'"
	done
}

check_tools() {
	local tool
	for tool in b3sum find xargs awk sort; do
		command -v "$tool" >/dev/null || die "missing tool: $tool"
	done
	# The shell builtin `time` cannot report peak RSS; GNU time can.
	[[ -x /usr/bin/time ]] || die "GNU time missing (apt-get install -y time)"
	if ((!SKIP_AIDE)); then
		command -v aide >/dev/null || die "missing tool: aide (or pass --skip-aide)"
	fi
	if ((!PEERS_ONLY)); then
		command -v cargo >/dev/null || die "missing tool: cargo"
		command -v jq >/dev/null || die "missing tool: jq (parses driftwatch --format json)"
	fi
}

# Fails early (before minutes of work) when --cold cannot actually drop caches,
# e.g. not root, or /proc/sys read-only inside a container.
drop_caches() {
	sync
	if ! { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
		die "--cold: cannot write /proc/sys/vm/drop_caches (needs root and a writable /proc/sys)"
	fi
}

prepare_tree() {
	if [[ -n "$TREE" ]]; then
		[[ -d "$TREE" ]] || die "--tree: not a directory: $TREE"
		TREE="$(cd -- "$TREE" && pwd)"
		return
	fi
	TREE="$BENCH_DIR/usr"
	if [[ -d "$TREE" ]]; then
		log "reusing tree copy $TREE"
		return
	fi
	# Copy to a .partial name and rename at the end, so an interrupted copy is
	# never mistaken for a complete tree on the next run.
	log "copying /usr to $TREE (one-off, takes a minute or two)"
	rm -rf -- "$TREE.partial"
	cp -a /usr "$TREE.partial"
	mv -- "$TREE.partial" "$TREE"
}

LOAD_AT_START=""
TREE_FILES=0 TREE_ENTRIES=0 TREE_BYTES=0 TREE_DU=""
describe_tree() {
	TREE_FILES="$(find "$TREE" -type f | wc -l)"
	TREE_ENTRIES="$(find "$TREE" | wc -l)"
	TREE_BYTES="$(find "$TREE" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%d", s }')"
	TREE_DU="$(du -sh "$TREE" | cut -f1)"
	log "tree $TREE: $TREE_FILES regular files, $TREE_ENTRIES entries, $(gb "$TREE_BYTES") GB file data, du -sh $TREE_DU"
}

build_driftwatch() {
	log "cargo build --release -p driftwatch-agent"
	(cd -- "$REPO_ROOT" && cargo build --release -p driftwatch-agent) >&2
	DW_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/driftwatch-agent"
	[[ -x "$DW_BIN" ]] || die "built, but no binary at $DW_BIN"
}

# Warm mode: read every file once so the first timed run is not the only one
# paying for disk I/O (and so every tool sees the same, fully cached tree).
warm_cache() {
	log "warming page cache (one untimed b3sum pass over the tree)"
	b3sum_pipeline >/dev/null
}

# The b3sum peer: one b3sum per CPU, one hashing thread each, fed by find.
# Used untimed by warm_cache and, via `bash -c`, by the timed measurement.
b3sum_pipeline() {
	find "$TREE" -type f -print0 | xargs -0 -P "$JOBS" b3sum --num-threads 1
}

median() {
	printf '%s\n' "$@" | sort -g | awk '
		{ v[NR] = $1 }
		END { if (NR % 2) printf "%.2f", v[(NR + 1) / 2]
		      else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Why a timed command exited non-zero. A failed run's time is meaningless, so
# the benchmark stops instead of reporting it.
explain_failure() {
	local id=$1 rc=$2 out=$3 why
	case "$id:$rc" in
	verify*:1) why="driftwatch reported drift on an unchanged tree" ;;
	verify*:3) why="driftwatch reported incomplete coverage (some entries not verified)" ;;
	aide_check:*) why="aide --check found differences or failed (exit bits: 1 added, 2 removed, 4 changed; >=14 error)" ;;
	*:127 | *:126) why="command not found or not executable" ;;
	*) why="command failed" ;;
	esac
	printf 'peers.sh: %s: exit %s: %s\n' "${LABEL[$id]}" "$rc" "$why" >&2
	printf -- '--- stderr (tail) ---\n' >&2
	tail -n 20 "$WORK/stderr.txt" >&2 || true
	if [[ "$out" != /dev/null ]]; then
		printf -- '--- stdout (head) ---\n' >&2
		head -c 3000 "$out" >&2 || true
		printf '\n' >&2
	fi
}

# measure ID "LABEL" RUNS PRE_HOOK OUT_FILE -- CMD...
# Times CMD RUNS times with GNU time. %e is wall seconds; %M is peak RSS in KB
# of the process *tree*: Linux folds reaped descendants' max RSS into the
# rusage of their waiter, so for `bash -c 'a | b'` it is the largest single
# process in the pipeline (not the sum of concurrent processes).
# PRE_HOOK runs untimed before each run (e.g. delete the previous output).
measure() {
	local id=$1 runs=$3 hook=$4 out=$5
	LABEL[$id]=$2
	shift 6
	local i rc wall kb peak=0 walls=()
	for ((i = 1; i <= runs; i++)); do
		"$hook"
		if ((COLD)); then drop_caches; fi
		rc=0
		/usr/bin/time -o "$WORK/time.txt" -f '%e %M' "$@" >"$out" 2>"$WORK/stderr.txt" || rc=$?
		if ((rc != 0)); then
			explain_failure "$id" "$rc" "$out"
			exit 1
		fi
		# On failure GNU time prefixes a status line; the numbers are last.
		read -r wall kb < <(tail -n 1 "$WORK/time.txt")
		walls+=("$wall")
		if ((kb > peak)); then peak=$kb; fi
		log "${LABEL[$id]}: run $i/$runs: ${wall} s, $((kb / 1024)) MB"
	done
	WALL[$id]="$(median "${walls[@]}")"
	RSS[$id]="$peak"
}

no_hook() { :; }
remove_manifest() { rm -f -- "$WORK/m.dwm"; }
remove_aide_db_new() { rm -f -- "$WORK/aide.db.new"; }

measure_peers() {
	# $1/$2 are expanded by the inner bash (positional args), not here.
	# shellcheck disable=SC2016
	measure b3sum "b3sum" "$RUNS" no_hook /dev/null -- \
		bash -c 'set -o pipefail; find "$1" -type f -print0 | xargs -0 -P "$2" b3sum --num-threads 1' \
		b3sum-pipeline "$TREE" "$JOBS"
	measure find "find -printf" "$RUNS" no_hook /dev/null -- \
		find "$TREE" -printf '%p %s %m %U %G %T@\n'
}

MANIFEST_BYTES=0 MANIFEST_ENTRIES=""
measure_driftwatch() {
	local m="$WORK/m.dwm"
	# SOURCE_DATE_EPOCH pins the manifest timestamp (reproducible bake).
	measure bake "driftwatch bake" "$RUNS" remove_manifest "$WORK/bake.json" -- \
		env SOURCE_DATE_EPOCH=0 "$DW_BIN" bake --root "$TREE" --out "$m" --format json
	MANIFEST_BYTES="$(stat -c %s "$m")"
	MANIFEST_ENTRIES="$(jq -r '.entries // empty' "$WORK/bake.json" 2>/dev/null || true)"
	log "bake summary: $(jq -c '{digest, files, entries, packages}' "$WORK/bake.json" 2>/dev/null || head -c 300 "$WORK/bake.json")"

	measure verify "driftwatch verify" "$RUNS" no_hook "$WORK/verify.json" -- \
		"$DW_BIN" verify --root "$TREE" --manifest "$m" --format json
	measure verify_meta "driftwatch verify --metadata-only" "$RUNS" no_hook "$WORK/verify.json" -- \
		"$DW_BIN" verify --root "$TREE" --manifest "$m" --format json --metadata-only

	if ((THREADS_SWEEP)); then
		local t
		for t in "${SWEEP_THREADS[@]}"; do
			measure "verify_t$t" "driftwatch verify --threads $t" "$RUNS" no_hook "$WORK/verify.json" -- \
				"$DW_BIN" verify --root "$TREE" --manifest "$m" --format json --threads "$t"
		done
	fi
}

# AIDE selection lines are PCRE regexes matched from the start of the path;
# escape metacharacters ('.' is common in paths). '/' must stay literal.
regex_escape() {
	printf '%s' "$1" | sed 's/[][\\.^$*+?(){}|]/\\&/g'
}

write_aide_conf() {
	# AIDE's config parser splits on whitespace; there is no quoting.
	[[ "$TREE" =~ [[:space:]#@] ]] && die "AIDE cannot take a tree path with spaces, '#' or '@': $TREE"
	# Notes (AIDE 0.18):
	# - 'R' is a built-in group (md5 + acl/xattrs/selinux/caps...); define our
	#   own group so AIDE does sha256 only, like driftwatch does one hash.
	# - '(/|$)' stops the rule from also matching siblings such as usr.partial
	#   (selection regexes are prefix matches).
	# - num_workers defaults to 1; set it to nproc so AIDE gets the same cores.
	# - Attributes mirror what driftwatch records: perms, type, inode, link
	#   target and count, owner, size, mtime, ctime, content hash.
	cat >"$WORK/aide.conf" <<EOF
# generated by agent/benches/peers.sh; removed after the run
database_in=file:$WORK/aide.db
database_out=file:$WORK/aide.db.new
gzip_dbout=no
num_workers=$AIDE_WORKERS
report_url=stdout
log_level=warning
DWSHA = p+ftype+i+l+n+u+g+s+m+c+sha256
$(regex_escape "$TREE")(/|$) DWSHA
EOF
	aide --config "$WORK/aide.conf" --config-check >&2 || die "generated AIDE config rejected: $WORK/aide.conf"
}

measure_aide() {
	write_aide_conf
	measure aide_init "aide --init" "$AIDE_RUNS" remove_aide_db_new "$WORK/aide-init.out" -- \
		aide --config "$WORK/aide.conf" --init
	mv -- "$WORK/aide.db.new" "$WORK/aide.db"
	log "aide db: $(grep -cv '^[@#]' "$WORK/aide.db") entries, $(stat -c %s "$WORK/aide.db") bytes"
	measure aide_check "aide --check" "$AIDE_RUNS" no_hook "$WORK/aide-check.out" -- \
		aide --config "$WORK/aide.conf" --check
	# Exit 0 already means "no differences"; double-check the report agrees.
	grep -q 'found NO differences' "$WORK/aide-check.out" ||
		die "aide --check exited 0 but did not report 'NO differences'"
}

# ---- formatting -------------------------------------------------------------

gb() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1e9 }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# a / b with two decimals
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

row() { printf '| %s | %s | %s | %s | %s |\n' "$@"; }

# row for measurement ID: tool, operation, ratio text
measured_row() {
	row "$2" "$3" "${WALL[$1]}" "$(mb "${RSS[$1]}")" "$4"
}

# "x.xx× PEER" = driftwatch wall / peer wall: below 1 means driftwatch is faster.
# (A peer time of 0.00 s, i.e. below GNU time's resolution, gives "n/a".)
vs() {
	local r
	r="$(ratio "${WALL[$1]}" "${WALL[$2]}")"
	if [[ $r == n/a ]]; then echo n/a; else printf '%s× %s' "$r" "$3"; fi
}
# "driftwatch OP x.xx× faster" = aide wall / driftwatch wall.
speedup() {
	local r
	r="$(ratio "${WALL[$1]}" "${WALL[$2]}")"
	if [[ $r == n/a ]]; then echo n/a; else printf 'driftwatch %s %s× faster' "$3" "$r"; fi
}

dw_version() {
	local rev
	rev="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
	if [[ -n "$(git -C "$REPO_ROOT" status --porcelain 2>/dev/null | head -n 1)" ]]; then
		rev="$rev-dirty"
	fi
	printf 'driftwatch %s' "$rev"
}

print_table() {
	local b3v findv cpu mode t aide_note
	b3v="$(b3sum --version | head -n 1)"
	# GNU find takes --version without a path.
	# shellcheck disable=SC2185
	findv="$(find --version | head -n 1 | sed 's/ (GNU findutils)//')"
	cpu="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
	mode=$([[ $COLD == 1 ]] && echo "cold cache (drop_caches before every run)" || echo "warm page cache (tree read once before timing)")

	row "tool" "operation" "wall s (median)" "peak RSS MB" "ratio vs peer"
	row "---" "---" "---:" "---:" "---"
	measured_row b3sum "$b3v (xargs -P$JOBS, 1 thread each)" "hash every regular file" "baseline"
	if ((!PEERS_ONLY)); then
		measured_row bake "$(dw_version)" "bake (hash + write manifest)" "$(vs bake b3sum b3sum)"
		measured_row verify "$(dw_version)" "verify (full hash)" "$(vs verify b3sum b3sum)"
		if ((THREADS_SWEEP)); then
			for t in "${SWEEP_THREADS[@]}"; do
				measured_row "verify_t$t" "$(dw_version)" "verify --threads $t" "$(vs "verify_t$t" b3sum b3sum)"
			done
		fi
	fi
	measured_row find "$findv" "find -printf (stat every entry)" "baseline"
	if ((!PEERS_ONLY)); then
		measured_row verify_meta "$(dw_version)" "verify --metadata-only" "$(vs verify_meta find find)"
	fi
	if ((!SKIP_AIDE)); then
		aide_note="$(aide --version 2>&1 | head -n 1) (sha256, $AIDE_WORKERS workers)"
		if ((PEERS_ONLY)); then
			measured_row aide_init "$aide_note" "--init" "—"
			measured_row aide_check "$aide_note" "--check" "—"
		else
			measured_row aide_init "$aide_note" "--init" "$(speedup aide_init bake bake)"
			measured_row aide_check "$aide_note" "--check" "$(speedup aide_check verify verify)"
		fi
	fi
	echo
	if ((!PEERS_ONLY)); then
		echo "Ratios: \`x× peer\` is driftwatch wall time / peer wall time (below 1 = driftwatch faster);" \
			"AIDE rows give AIDE wall time / driftwatch wall time."
	fi
	echo "Peak RSS is the max over runs of the largest single process (for the b3sum row: one" \
		"b3sum child, which mmaps the file it hashes, so it tracks the largest file)."
	if ((SKIP_AIDE)); then
		echo "Wall time: median of $RUNS run(s), $mode."
	else
		echo "Wall time: median of $RUNS run(s); AIDE rows: median of $AIDE_RUNS run(s)" \
			"(--aide-runs), as one AIDE pass takes minutes; $mode."
	fi
	echo
	# The backticks are Markdown code spans, not command substitution.
	# shellcheck disable=SC2016
	printf 'Tree: `%s`, %s regular files (%s entries), %s GB of file data, hard links counted per path (du -sh %s).' \
		"$TREE" "$TREE_FILES" "$TREE_ENTRIES" "$(gb "$TREE_BYTES")" "$TREE_DU"
	if ((!PEERS_ONLY)); then
		local per="n/a"
		if [[ -n "$MANIFEST_ENTRIES" && "$MANIFEST_ENTRIES" -gt 0 ]]; then
			per="$(ratio "$MANIFEST_BYTES" "$MANIFEST_ENTRIES")"
		fi
		printf ' Manifest: %s bytes, %s bytes/entry (%s entries).' \
			"$MANIFEST_BYTES" "$per" "${MANIFEST_ENTRIES:-n/a}"
	fi
	echo
	printf 'Machine: %s CPUs (%s), %s GiB RAM, Linux %s, load average %s at start. Date: %s.\n' \
		"$JOBS" "$cpu" "$(awk '/^MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)" \
		"$(uname -r)" "$LOAD_AT_START" "$(date -u +%Y-%m-%dT%H:%MZ)"
}

main() {
	parse_args "$@"
	check_tools
	mkdir -p -- "$BENCH_DIR"
	WORK="$(mktemp -d "$BENCH_DIR/work.XXXXXX")"
	trap cleanup EXIT
	if ((COLD)); then drop_caches; fi # fail now, not after the build

	prepare_tree
	describe_tree
	if ((!PEERS_ONLY)); then build_driftwatch; fi
	if ((!COLD)); then warm_cache; fi
	# Timings on a busy machine (e.g. a cargo build alongside) are noise; record
	# the load so the table says so.
	LOAD_AT_START="$(cut -d' ' -f1 /proc/loadavg)"
	if awk -v l="$LOAD_AT_START" 'BEGIN { exit !(l > 0.5) }'; then
		log "warning: 1-min load average is $LOAD_AT_START; other work will skew the timings"
	fi

	measure_peers
	if ((!PEERS_ONLY)); then measure_driftwatch; fi
	if ((!SKIP_AIDE)); then measure_aide; fi

	print_table >"$WORK/results.md"
	cp -- "$WORK/results.md" "$BENCH_DIR/results.md"
	cat -- "$WORK/results.md"
	log "table written to $BENCH_DIR/results.md"
}

main "$@"
