printf('runner-test: octave ok\n');
