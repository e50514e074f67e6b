with Ada.Text_IO;

procedure Main is
begin
   Ada.Text_IO.Put_Line ("runner-test: ada ok");
end Main;
