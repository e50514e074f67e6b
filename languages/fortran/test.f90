program test
  print '(a)', 'runner-test: fortran ok'
end program test
