# One entry point. `make book` and `make test` create .venv and install on first use.
#   make book [PROFILE=cpu|smoke|gpu|full]   execute every chapter, build the website (cpu: the pocket
#                                            models' real results, offline)
#   make test                                unit tests + chapters at smoke + book build (smoke)
#   VENV= make test                          use the active environment (conda) instead of .venv
PROFILE ?= cpu
VENV ?= .venv
PYTHON ?= python3
PY := $(if $(VENV),$(VENV)/bin/python,python)
STAMP := $(if $(VENV),$(VENV)/.installed-stamp,.installed-stamp)

.PHONY: install book test lint clean

$(STAMP): pyproject.toml
ifneq ($(VENV),)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
endif
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all]"
	touch $(STAMP)

install: $(STAMP)

book: install
	$(PY) -m nbsupport book --profile $(PROFILE)

test: install
	@$(PY) -m pytest -q -ra; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure here"; exit 1; fi; \
	exit $$rc

clean:
	rm -rf _build runs .pytest_cache
