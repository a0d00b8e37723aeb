#!/bin/bash
# disk-report.sh: print the filesystems' usage with a timestamp (run daily by cron as root).
set -euo pipefail
echo "== $(date --iso-8601=seconds) disk report"
df -hP -x tmpfs -x devtmpfs
