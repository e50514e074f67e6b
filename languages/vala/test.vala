void main () {
    print ("runner-test: vala ok\n");
}
