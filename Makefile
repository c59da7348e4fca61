# Entry points; see README.md.
.PHONY: demo test build

demo:
	scripts/demo.sh

test:
	scripts/test.sh

build:
	cargo build --workspace --release
