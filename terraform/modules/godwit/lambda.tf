# The serverless shape: a Lambda function (the `bootstrap` handler built with
# `cargo lambda build --release --features lambda`) invoked on a schedule.

locals {
  lambda_schedule_on = local.lambda_on && var.lambda_schedule != null
  lambda_event       = coalesce(var.lambda_event, jsonencode({ pipeline = local.pipeline_url }))
}

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "lambda" {
  count              = local.lambda_on ? 1 : 0
  name               = "${local.prefix}-lambda"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "lambda_godwit" {
  count      = local.lambda_on ? 1 : 0
  role       = aws_iam_role.lambda[0].name
  policy_arn = aws_iam_policy.godwit.arn
}

# The Lambda service's needs for this function: its log lines, its environment (encrypted with
# the key).
data "aws_iam_policy_document" "lambda_runtime" {
  statement {
    sid       = "WriteTheLogGroup"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.this.arn}:*"]
  }

  statement {
    sid       = "DecryptTheEnvironment"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["lambda.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "lambda_runtime" {
  count  = local.lambda_on ? 1 : 0
  name   = "runtime"
  role   = aws_iam_role.lambda[0].id
  policy = data.aws_iam_policy_document.lambda_runtime.json
}

# The network interfaces of a function in a VPC (AWS's managed policy for exactly that).
resource "aws_iam_role_policy_attachment" "lambda_vpc" {
  count      = local.lambda_on ? 1 : 0
  role       = aws_iam_role.lambda[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_50:X-Ray needs xray:PutTraceSegments, an action godwit does not use; the JSON log lines and metric filters cover a run.
  #checkov:skip=CKV_AWS_272:Code signing needs a signing profile of the user's; the zip comes from the user's own build (cargo lambda build).
  count            = local.lambda_on ? 1 : 0
  function_name    = local.prefix
  description      = "godwit ${var.name}: one run per invocation"
  role             = aws_iam_role.lambda[0].arn
  filename         = var.lambda_zip_path
  source_code_hash = filebase64sha256(var.lambda_zip_path)
  handler          = "bootstrap"
  runtime          = "provided.al2023"
  architectures    = [var.cpu_architecture == "ARM64" ? "arm64" : "x86_64"]
  memory_size      = var.lambda_memory
  timeout          = var.lambda_timeout
  kms_key_arn      = aws_kms_key.this.arn

  # One run at a time: a second would find the pipeline's lease held anyway.
  reserved_concurrent_executions = 1

  # The Lambda configuration cannot read Secrets Manager by itself: the values are put into the
  # (KMS-encrypted) environment at apply time.
  environment {
    variables = merge(
      {
        GODWIT_DATABASE_URL = var.database_url
        GODWIT_LOG          = "info"
      },
      local.redis_on ? { GODWIT_REDIS_URL = local.redis_url } : {},
    )
  }

  vpc_config {
    subnet_ids         = var.private_subnet_ids
    security_group_ids = [aws_security_group.godwit.id]
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.this.name
  }

  # Invocations that failed for good are reported on the events topic.
  dead_letter_config {
    target_arn = aws_sns_topic.events.arn
  }

  tags = local.tags

  depends_on = [aws_iam_role_policy.lambda_runtime, aws_iam_role_policy_attachment.lambda_vpc]
}

resource "aws_scheduler_schedule" "lambda" {
  count                        = local.lambda_schedule_on ? 1 : 0
  name                         = "${local.prefix}-lambda"
  description                  = "godwit ${var.name}: invoke the Lambda function"
  schedule_expression          = var.lambda_schedule
  schedule_expression_timezone = var.schedule_timezone
  kms_key_arn                  = aws_kms_key.this.arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_lambda_function.this[0].arn
    role_arn = aws_iam_role.scheduler[0].arn
    input    = local.lambda_event

    retry_policy {
      maximum_retry_attempts = 0
    }
  }
}
