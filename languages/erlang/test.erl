#!/usr/bin/env escript
main(_) ->
    io:format("runner-test: erlang ok~n").
