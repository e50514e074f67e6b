lang = "coffeescript"
console.log "runner-test: #{lang} ok"
