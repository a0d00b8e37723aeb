# opslab: `make lab` brings the lab up and checks it; `make test` runs every test suite.
# Both install what they need first (idempotent). Run as root on Debian 12.
SHELL := /bin/bash
VENV := .venv
LAB := $(VENV)/bin/lab
PYTEST := $(VENV)/bin/pytest
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help install image peers lab test test-unit test-integration lint clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

install: ## System packages (debootstrap, systemd-container, ...) and the venv at .venv
	@scripts/install-system.sh
	@scripts/install-venv.sh

image: install ## Build the lab's golden image once (cached under /var/cache/opslab)
	$(LAB) sandbox image

lab: image ## Bring the sandbox up, run site.yml, show `lab check all`, then the API at its VIP: a short bench, a drill
	$(LAB) sandbox up
	$(VENV)/bin/ansible-playbook site.yml
	$(LAB) check all || true
	$(LAB) sandbox status
	$(VENV)/bin/python scripts/platform-summary.py

peers: install ## Build llama.cpp's llama-server for this CPU (cached under /var/cache/opslab/peers; ~10 min once)
	$(VENV)/bin/python -m inference fetch-model >/dev/null  # the build's smoke test decodes with it
	PYTHON=$(CURDIR)/$(VENV)/bin/python scripts/build-peers.sh llama-server

test: image peers ## Run every test suite (unit, inference, benchmarks against llama-server, integration)
	$(PYTEST) tests/

test-unit: install ## Run the fast unit tests (no root, no sandbox)
	$(PYTEST) tests/unit

test-integration: image ## Run the sandbox integration tests
	$(PYTEST) tests/integration

lint: install ## yamllint (.yamllint) and ansible-lint (.ansible-lint: production profile) the roles, playbooks and site.yml
	$(VENV)/bin/yamllint --strict roles/ playbooks/ site.yml .ansible-lint .yamllint
	$(VENV)/bin/ansible-lint roles/ playbooks/ site.yml

clean: ## Take the sandbox down and remove caches (the venv and the image cache stay)
	if [[ -x $(LAB) ]]; then $(LAB) sandbox down; fi
	rm -rf .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
