program test;
begin
  writeln('runner-test: pascal ok');
end.
