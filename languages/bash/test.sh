lang=bash
echo "runner-test: ${lang} ok"
