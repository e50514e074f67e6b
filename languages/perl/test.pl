use strict;
use warnings;
print "runner-test: perl ok\n";
