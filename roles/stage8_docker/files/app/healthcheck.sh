#!/bin/bash
# Exit 0 when the server answers GET /health with 200 (bash's /dev/tcp: no curl in the image).
set -euo pipefail
exec 3<>"/dev/tcp/127.0.0.1/${PORT:-8080}"
printf 'GET /health HTTP/1.0\r\n\r\n' >&3
read -r -t 2 status_line <&3
[[ $status_line == *" 200 "* ]]
