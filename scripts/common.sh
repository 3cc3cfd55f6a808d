# Shared by the scripts that make histostain's packaged weights (source it; not run on its own):
# ROOT (the repository), HISTOSTAIN and PYTHON (default: the repository's .venv), work_dir DIR PREFIX (an
# absolute, existing work folder: DIR, else a new temp dir), and step/run, which log with the elapsed seconds.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HISTOSTAIN="${HISTOSTAIN:-$ROOT/.venv/bin/histostain}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
START=$SECONDS

work_dir() {
    local dir="${1:-$(mktemp -d -t "$2.XXXXXX")}"
    mkdir -p "$dir"
    (cd "$dir" && pwd)
}
step() { printf '\n=== [%4ds] %s\n' "$((SECONDS - START))" "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }
