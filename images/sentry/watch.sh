#!/bin/bash
# loopbox-sentry-watch PID:NAME...: runs without any capability once the sentry is set up;
# exits 1 with "loopbox-sentry: error: NAME exited" when one of the daemons is gone, 0 on
# SIGTERM (each daemon writes its records synchronously: nothing is left to flush).
set -u
trap 'exit 0' TERM INT
while :; do
	for entry in "$@"; do
		pid=${entry%%:*}
		if ! read -r _ _ st _ <"/proc/$pid/stat" 2>/dev/null || [ "$st" = Z ]; then
			echo "loopbox-sentry: error: ${entry#*:} exited"
			exit 1
		fi
	done
	sleep 0.5 &
	wait $!
done
