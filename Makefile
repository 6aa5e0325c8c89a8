# taskexec: one Makefile. `make` builds build/taskexec; `make test` builds the
# sanitizer build and runs every unit and integration test; `make run` serves.
CC = gcc
PKGS = libmicrohttpd jansson sqlite3 uuid libpq nettle libcurl
WARN = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
       -Wcast-qual -Wno-missing-field-initializers
CPPFLAGS = -D_GNU_SOURCE -Isrc
# Recursive (=) so pkg-config runs after the deps step has installed the packages.
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS))
# wslay (WebSocket framing) ships no pkg-config file in Debian 12. libpq and libcurl are
# not linked: they are opened at their first use (src/core/dynlib.h).
LAZY_PKGS = libpq libcurl
PKG_LIBS = $(shell pkg-config --libs $(filter-out $(LAZY_PKGS),$(PKGS))) -lwslay -lpthread -lm
CFLAGS = -std=c17 -O2 -g $(WARN)
SAN = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
CFLAGS_SAN = -std=c17 -O1 -g $(SAN) $(WARN)

# Folders are layers (see README, Layout; `make lint` checks the include direction).
SRC = $(filter-out src/main.c, $(shell find src -name '*.c' | sort))
HDR = $(shell find src -name '*.h')
GEN = catalog_builtin aiopslab_runner openapi_doc docs_page dashboard_page
OBJ = $(SRC:src/%.c=build/obj/%.o) $(GEN:%=build/obj/%.o)
OBJ_SAN = $(SRC:src/%.c=build/asan/obj/%.o) $(GEN:%=build/asan/obj/%.o)
UNIT_SRC = $(wildcard tests/test_*.c)
UNIT_BIN = $(UNIT_SRC:tests/%.c=build/asan/%)
DEPS = build/.deps-ok

.PHONY: all run test unit it bench soak fuzz fuzz-smoke clean deps check-aiopslab check-openenv lint
all: build/taskexec

$(DEPS): scripts/install-deps.sh
	bash scripts/install-deps.sh
	@mkdir -p build && touch $@
deps: $(DEPS)

# Text files compiled into the binary as C strings (so the binary is self-contained).
define embed
	@mkdir -p $(@D)
	{ echo '/* Generated from $< by the Makefile. */'; \
	  echo 'extern const char $(1)[];'; \
	  echo 'const char $(1)[] ='; \
	  sed 's/\\/\\\\/g; s/"/\\"/g; s/?/\\?/g; s/.*/    "&\\n"/' $<; echo '    "";'; } > $@
endef
build/gen/catalog_builtin.c: share/aiopslab-problems.txt
	$(call embed,catalog_builtin)
build/gen/aiopslab_runner.c: share/aiopslab_runner.py
	$(call embed,aiopslab_runner_py)
build/gen/openapi_doc.c: share/openapi.json
	$(call embed,openapi_json)
build/gen/docs_page.c: share/docs.html
	$(call embed,docs_html)
build/gen/dashboard_page.c: share/dashboard.html
	$(call embed,dashboard_html)

build/obj/%.o: build/gen/%.c | $(DEPS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c $< -o $@
build/asan/obj/%.o: build/gen/%.c | $(DEPS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_SAN) -c $< -o $@

build/obj/%.o: src/%.c $(HDR) | $(DEPS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(PKG_CFLAGS) $(CFLAGS) -c $< -o $@
build/asan/obj/%.o: src/%.c $(HDR) | $(DEPS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(PKG_CFLAGS) $(CFLAGS_SAN) -c $< -o $@

build/taskexec: build/obj/main.o $(OBJ)
	$(CC) $(CFLAGS) $^ $(PKG_LIBS) -o $@
build/asan/taskexec: build/asan/obj/main.o $(OBJ_SAN)
	$(CC) $(CFLAGS_SAN) $^ $(PKG_LIBS) -o $@

build/asan/test_%: tests/test_%.c $(OBJ_SAN) $(HDR) | $(DEPS)
	$(CC) $(CPPFLAGS) $(PKG_CFLAGS) $(CFLAGS_SAN) $< $(OBJ_SAN) $(PKG_LIBS) -lcmocka -o $@

# Folders are layers: no file includes one of a layer above, no include cycle.
lint:
	/usr/bin/python3 scripts/lint-layers.py

run: build/taskexec
	./build/taskexec serve

# Sanitizer reports make a run fail; the integration suite also scans the
# server's stderr for them after each clean shutdown.
export ASAN_OPTIONS = detect_leaks=1:abort_on_error=0:halt_on_error=1
export UBSAN_OPTIONS = print_stacktrace=1:halt_on_error=1

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done
	/usr/bin/python3 -m pytest -q -p no:cacheprovider tests/py

# An OpenAPI validator from npm, for the test that checks /openapi.json.
NPM_VALIDATOR = build/npm/node_modules/@apidevtools/swagger-parser/package.json
$(NPM_VALIDATOR):
	npm install --no-audit --no-fund --loglevel=error --prefix build/npm @apidevtools/swagger-parser@10.1.0

# playwright-core drives Debian's chromium in the dashboard's end-to-end test (no browser
# download: the test passes executablePath).
NPM_PLAYWRIGHT = build/npm/node_modules/playwright-core/package.json
$(NPM_PLAYWRIGHT): | $(NPM_VALIDATOR)
	npm install --no-audit --no-fund --loglevel=error --prefix build/npm playwright-core@1.64.1

it: build/asan/taskexec $(NPM_VALIDATOR) $(NPM_PLAYWRIGHT)
	TASKEXEC_BIN=$(CURDIR)/build/asan/taskexec NODE_PATH=$(CURDIR)/build/npm/node_modules \
	  /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/it

# The aiopslab tests against a real AIOpsLab checkout instead of the stand-in (not in CI:
# it needs Docker, kind, kubectl, helm and AIOpsLab's Python dependencies; each worker's
# Kind cluster is created on the way). AIOPSLAB_PYTHON: a Python that has them.
# The OpenEnv endpoint against OpenEnv's real client (not in CI: it needs PyPI).
check-openenv: build/asan/taskexec
	@test -n "$(OPENENV_PYTHON)" || { echo "usage: make check-openenv OPENENV_PYTHON=/path/to/python (with openenv-core installed)"; exit 2; }
	TASKEXEC_BIN=$(CURDIR)/build/asan/taskexec $(OPENENV_PYTHON) tests/real/check_openenv.py

check-aiopslab: build/asan/taskexec
	@test -n "$(AIOPSLAB_DIR)" || { echo "usage: make check-aiopslab AIOPSLAB_DIR=/path/to/AIOpsLab [AIOPSLAB_PYTHON=/path/to/python]"; exit 2; }
	@test -f "$(AIOPSLAB_DIR)/aiopslab/config.yml" || { echo "$(AIOPSLAB_DIR)/aiopslab/config.yml is missing: copy config.yml.example and set k8s_host: kind"; exit 2; }
	TASKEXEC_BIN=$(CURDIR)/build/asan/taskexec AIOPSLAB_REAL_DIR=$(abspath $(AIOPSLAB_DIR)) \
	  AIOPSLAB_REAL_PYTHON=$(or $(AIOPSLAB_PYTHON),python3) \
	  /usr/bin/python3 -m pytest -v -p no:cacheprovider tests/it/test_aiopslab.py

test: build/taskexec
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) fuzz-smoke
	$(MAKE) it

build/bench/load: bench/load.c | $(DEPS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< $(PKG_CFLAGS) $(PKG_LIBS) -lcurl -o $@

# Figures, never a pass/fail: see bench/run.sh.
bench: build/taskexec build/bench/load
	bash bench/run.sh

# libFuzzer targets (clang): request bodies, executor lines, paths and other request text.
FUZZ_TARGETS = request proto router
FUZZ_SECONDS ?= 60
FUZZ_SAN = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
OBJ_FUZZ = $(SRC:src/%.c=build/fuzz/obj/%.o) $(GEN:%=build/fuzz/obj/%.o)
build/fuzz/obj/%.o: src/%.c $(HDR) | $(DEPS)
	@mkdir -p $(@D)
	clang $(CPPFLAGS) $(PKG_CFLAGS) -std=c17 -O1 -g $(FUZZ_SAN) -fsanitize=fuzzer-no-link \
	  -Wall -Wextra -Werror -c $< -o $@
build/fuzz/obj/%.o: build/gen/%.c | $(DEPS)
	@mkdir -p $(@D)
	clang -std=c17 -O1 -c $< -o $@
build/fuzz/fuzz_%: fuzz/fuzz_%.c $(OBJ_FUZZ)
	clang $(CPPFLAGS) $(PKG_CFLAGS) -std=c17 -O1 -g $(FUZZ_SAN) -fsanitize=fuzzer -Wall -Wextra \
	  -Werror $< $(OBJ_FUZZ) $(PKG_LIBS) -o $@

fuzz: $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)
	@set -e; for t in $(FUZZ_TARGETS); do mkdir -p build/fuzz/corpus/$$t; \
	  echo "== fuzz_$$t for $(FUZZ_SECONDS) s"; \
	  build/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
	    -artifact_prefix=build/fuzz/crash-$$t- build/fuzz/corpus/$$t fuzz/corpus/$$t; done

# In `make test`: replay the seeds and every input that once crashed, then fuzz briefly;
# a crash fails the target (its output was once piped through tail, which hid it).
# (Only the folders that exist: libFuzzer stops at a missing one before replaying any.)
fuzz-smoke: $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  build/fuzz/fuzz_$$t -runs=0 $$(ls -d fuzz/corpus/$$t fuzz/regressions/$$t 2>/dev/null) \
	    > build/fuzz/replay-$$t.log 2>&1 || { cat build/fuzz/replay-$$t.log; exit 1; }; \
	  tail -1 build/fuzz/replay-$$t.log; \
	  mkdir -p build/fuzz/corpus/$$t; \
	  build/fuzz/fuzz_$$t -max_total_time=5 -max_len=65536 -artifact_prefix=build/fuzz/crash-$$t- \
	    build/fuzz/corpus/$$t fuzz/corpus/$$t > build/fuzz/run-$$t.log 2>&1 \
	    || { tail -40 build/fuzz/run-$$t.log; exit 1; }; \
	  tail -1 build/fuzz/run-$$t.log; done

# An hour of mixed load with the server's memory and open files printed (not in CI).
SOAK_SECONDS ?= 3600
soak: build/taskexec
	/usr/bin/python3 bench/soak.py $(SOAK_SECONDS)

clean:
	rm -rf build
