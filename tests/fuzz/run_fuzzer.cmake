# Runs one libFuzzer target for a fixed time over a fresh copy of its seeds.
# Invoked by ctest with -DFUZZER= -DSEEDS= -DWORK= -DNAME= -DSECONDS=.
# The copy keeps the source tree clean: libFuzzer writes new inputs into the
# first corpus directory it is given.
set(corpus ${WORK}/corpus/${NAME})
set(artifacts ${WORK}/artifacts)
file(REMOVE_RECURSE ${corpus})
file(MAKE_DIRECTORY ${corpus} ${artifacts})
file(COPY ${SEEDS}/ DESTINATION ${corpus})

execute_process(
  COMMAND ${FUZZER} -max_total_time=${SECONDS} -timeout=10 -print_final_stats=1
          -artifact_prefix=${artifacts}/${NAME}- ${corpus}
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${NAME} failed (${rc}); the input is in ${artifacts}")
endif()
