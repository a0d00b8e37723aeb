#!/bin/bash
# count-status.sh: print how many requests in an nginx access log got one HTTP status.
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") LOGFILE STATUS   (STATUS is a 3-digit HTTP code)" >&2
    exit 2
}

[[ $# -eq 2 ]] || usage
logfile=$1
status=$2
[[ $status =~ ^[0-9]{3}$ ]] || usage
if [[ ! -r $logfile ]]; then
    echo "$(basename "$0"): cannot read $logfile" >&2
    exit 1
fi
awk -v status="$status" '$9 == status { n++ } END { print n + 0 }' "$logfile"
