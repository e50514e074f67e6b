       IDENTIFICATION DIVISION.
       PROGRAM-ID. RUNNERTEST.
       PROCEDURE DIVISION.
           DISPLAY "runner-test: cobol ok".
           STOP RUN.
