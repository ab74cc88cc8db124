# concerto_ros: every target sets itself up (scripts/setup.sh is idempotent).
#   make demo    set up, then run the node on the embedded generated RGB-D sequence
#   make test    set up, then run the test suite
#   make bench   set up (+ Open3D), then run the benchmarks
#   CUDA=1 make demo    the same with torch/spconv for CUDA
SHELL := /bin/bash
VENV ?= .venv
export VENV

.PHONY: setup demo test bench clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: scripts/setup.sh requirements/*.txt setup.py package.xml concerto_ros_interfaces/srv/* concerto_ros_interfaces/msg/* ros_deps/tf2_msgs/msg/*
	scripts/setup.sh
	touch $@

demo: setup
	scripts/env.sh concerto demo

test: setup
	scripts/env.sh python -m pytest test -q $(PYTEST_ARGS)

bench: setup
	@ldconfig -p | grep -q 'libusb-1.0.so.0' || { \
	  if command -v apt-get >/dev/null; then \
	    $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y --no-install-recommends libusb-1.0-0 || \
	    echo "warning: libusb-1.0-0 could not be installed: the Open3D comparison will be skipped"; \
	  else echo "warning: libusb-1.0-0 missing: the Open3D comparison will be skipped"; fi; }
	$(VENV)/bin/python -m pip -q install -r requirements/bench.txt
	scripts/env.sh python benchmarks/bench_pipeline.py $(BENCH_ARGS)

clean:
	rm -rf build install log outputs $(VENV)
