@.str = private unnamed_addr constant [24 x i8] c"runner-test: llvm_ir ok\00"

declare i32 @puts(i8*)

define i32 @main() {
  %s = getelementptr inbounds [24 x i8], [24 x i8]* @.str, i64 0, i64 0
  %r = call i32 @puts(i8* %s)
  ret i32 0
}
