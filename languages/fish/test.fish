set lang fish
echo "runner-test: $lang ok"
