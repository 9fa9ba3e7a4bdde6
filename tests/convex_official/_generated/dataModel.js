/* Hand-written stand-in for codegen output: the data model is types only. */
export {};
