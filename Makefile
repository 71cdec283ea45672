# ioupos — make (build), make test, make test-asan, make bench, make demo, make clean
# The CPU path is the reference: no -ffast-math anywhere.

CC       ?= cc
CXX      ?= c++
STB_DIR  ?= /usr/include/stb
BUILD    ?= build
WARN     := -Wall -Wextra -Werror
CPPFLAGS := -D_POSIX_C_SOURCE=200809L -I. -I$(STB_DIR)
CFLAGS   ?= -O2 -g
LDLIBS   := -lm -lpthread
SAN      := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

DRIVERS  := $(BUILD)/ioupos-crops
TESTS    := $(BUILD)/test_sampler
BENCHES  := $(BUILD)/bench_sampler

.PHONY: all test test-asan test-cxx bench demo clean stb
all: $(DRIVERS)

# stb comes from Debian's libstb-dev: install it when we are root, else say how.
stb:
	@if [ ! -f $(STB_DIR)/stb_image.h ] || [ ! -f $(STB_DIR)/stb_image_write.h ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "stb headers missing: installing libstb-dev"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libstb-dev) >/dev/null || exit 1; \
	  else \
	    echo "error: stb headers not found in $(STB_DIR). Run: sudo apt-get install -y libstb-dev"; exit 1; \
	  fi; \
	fi

$(BUILD)/ioupos-%: drivers/ioupos_%.c ioupos.h | stb
	@mkdir -p $(BUILD)
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(CPPFLAGS) $< -o $@ $(LDLIBS)

$(BUILD)/test_%: tests/test_%.c tests/test_util.h ioupos.h | stb
	@mkdir -p $(BUILD)
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(CPPFLAGS) $< -o $@ $(LDLIBS)

$(BUILD)/bench_%: bench/bench_%.c ioupos.h | stb
	@mkdir -p $(BUILD)
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(CPPFLAGS) $< -o $@ $(LDLIBS)

# The header must compile cleanly as C++ too (declarations and implementation).
$(BUILD)/cxx_check: tests/cxx_check.cpp ioupos.h | stb
	@mkdir -p $(BUILD)
	$(CXX) -std=c++11 $(CFLAGS) $(WARN) $(CPPFLAGS) $< -o $@ $(LDLIBS)

test: $(TESTS) $(DRIVERS) $(BUILD)/cxx_check
	@sh tests/run.sh $(BUILD) $(TESTS) $(BUILD)/cxx_check

# Same tests under AddressSanitizer + UndefinedBehaviorSanitizer (fewer draws: ~10x slower).
test-asan: | stb
	$(MAKE) --no-print-directory BUILD=$(BUILD)/asan CFLAGS="-O1 -g $(SAN)" \
	  IOUPOS_TEST_DRAWS=$${IOUPOS_TEST_DRAWS:-100000} test

bench: $(BENCHES)
	@for b in $(BENCHES); do $$b || exit 1; done

demo: $(BUILD)/ioupos-crops
	@mkdir -p $(BUILD)/demo
	$(BUILD)/ioupos-crops --min_iou 0.3 --max_iou 0.6 --n_pairs 8 --seed 0 \
	  --output $(BUILD)/demo/pairs_0.3_0.6.png
	@echo "open $(BUILD)/demo/pairs_0.3_0.6.png to see the pairs"

clean:
	rm -rf $(BUILD)
