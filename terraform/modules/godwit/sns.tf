# godwit's events ([notify] sns_topic_arn) and the alarms below go to one encrypted topic.
resource "aws_sns_topic" "events" {
  name              = "${local.prefix}-events"
  kms_master_key_id = aws_kms_key.this.arn
  tags              = local.tags
}

# An example subscription: e-mail (confirmed by the recipient). Use an SQS queue, a Lambda
# function or a chat webhook the same way, with a filter policy on event_type if needed.
resource "aws_sns_topic_subscription" "email" {
  count     = var.alert_email == null ? 0 : 1
  topic_arn = aws_sns_topic.events.arn
  protocol  = "email"
  endpoint  = var.alert_email
}

# Who may publish: this account's principals (godwit's roles, by their IAM policy) and
# CloudWatch alarms of this account.
data "aws_iam_policy_document" "topic" {
  statement {
    sid       = "AlarmsOfThisAccount"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.events.arn]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }

  statement {
    sid       = "PrincipalsOfThisAccount"
    actions   = ["sns:Publish", "sns:GetTopicAttributes"]
    resources = [aws_sns_topic.events.arn]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }
}

resource "aws_sns_topic_policy" "events" {
  arn    = aws_sns_topic.events.arn
  policy = data.aws_iam_policy_document.topic.json
}
