echo "runner-test: nim ok"
