# Two commands: `make demo` and `make test`. Each sets up what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages: MIDI rendering (fluidsynth + a GM soundfont), speech engines (flite, espeak-ng), sentences
# (fortunes), jemalloc (faster CPU training: scripts/train_speech.sh), and Festival voices, which are
# held out: used only to evaluate on voices never trained on; chromium + its driver for the web UI's browser test.
APT_PACKAGES := fluidsynth fluid-soundfont-gm flite espeak-ng fortunes fortunes-min libjemalloc2 \
	festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts chromium chromium-driver
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	bash scripts/demo.sh

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 -q

bench: setup
	$(BIN)/python benchmarks/tokenizer.py

clean:
	rm -rf $(VENV) build *.egg-info
