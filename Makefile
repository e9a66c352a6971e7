.PHONY: run test sandbox-down sandbox-reset bench
run:
	scripts/run
test:
	scripts/test
sandbox-down:
	bash sandbox/sandbox.sh down
sandbox-reset:
	bash sandbox/sandbox.sh reset
bench:
	scripts/bootstrap && .venv/bin/python -m bench
