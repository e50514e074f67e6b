let () = print_endline "runner-test: ocaml ok"
