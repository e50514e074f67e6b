IO.puts("runner-test: elixir ok")
